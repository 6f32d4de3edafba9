//! `hudi-writer COMMAND TABLE ...`: writes a Hudi table with hudi-rs, for the tests only.
//!
//! ```text
//! hudi-writer create TABLE --type cow|mor --key COL --ordering COL [--name NAME]
//! hudi-writer append|upsert|overwrite TABLE ROWS.parquet
//! hudi-writer delete TABLE "FILTER"          e.g. "id IN (1, 2)" or "id = 3"
//! hudi-writer compact TABLE                  merge-on-read only
//! ```
//! Prints the commit's instant time (the timeline's requested time) on stdout.

use std::fs::File;
use std::process::ExitCode;

use arrow_array::RecordBatch;
use hudi::config::table::TableTypeValue;
use hudi::table::Table;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn usage() -> ExitCode {
    eprintln!(
        "usage: hudi-writer create TABLE --type cow|mor --key COL --ordering COL [--name NAME]\n\
         \x20      hudi-writer append|upsert|overwrite TABLE ROWS.parquet\n\
         \x20      hudi-writer delete TABLE FILTER\n\
         \x20      hudi-writer compact TABLE"
    );
    ExitCode::from(2)
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn read_parquet(path: &str) -> Result<Vec<RecordBatch>, String> {
    let file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(65_536).build())
        .map_err(|e| format!("{path}: {e}"))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))
}

async fn run(args: &[String]) -> Result<String, String> {
    let (cmd, table_path) = (args[0].as_str(), args[1].as_str());
    let err = |e: hudi::error::CoreError| format!("{cmd} {table_path}: {e}");
    if cmd == "create" {
        let kind = match flag(args, "--type").unwrap_or("cow") {
            "cow" => TableTypeValue::CopyOnWrite,
            "mor" => TableTypeValue::MergeOnRead,
            other => return Err(format!("--type must be cow or mor, got {other}")),
        };
        let key = flag(args, "--key").ok_or("create needs --key COL")?;
        let mut builder = Table::create(table_path)
            .with_table_name(flag(args, "--name").unwrap_or("features"))
            .with_table_type(kind)
            .with_record_key_fields([key]);
        if let Some(ordering) = flag(args, "--ordering") {
            builder = builder.with_ordering_fields([ordering]);
        }
        builder.create().await.map_err(err)?;
        return Ok(String::new());
    }
    let mut table = Table::new(table_path).await.map_err(err)?;
    let result = match cmd {
        "append" | "upsert" | "overwrite" => {
            let rows = args.get(2).ok_or("missing ROWS.parquet")?;
            let batches = read_parquet(rows)?;
            match cmd {
                "append" => table.append(batches).await,
                "upsert" => table.upsert(batches).await,
                _ => table.overwrite(batches).await,
            }
            .map_err(err)?
        }
        "delete" => {
            let filter = args.get(2).ok_or("missing FILTER")?;
            table.delete(filter).await.map_err(err)?
        }
        "compact" => {
            let done = table.compact().await.map_err(err)?;
            return Ok(done.requested_time.unwrap_or_default());
        }
        other => return Err(format!("unknown command {other}")),
    };
    Ok(result.requested_time.unwrap_or_default())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return usage();
    }
    match run(&args).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
