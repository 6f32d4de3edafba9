"""Generate the Python protobuf / gRPC modules from ``proto/``.

``python -m serving._codegen`` (run by ``make proto`` on every build) compiles every ``.proto``
file under ``proto/`` with ``grpc_tools.protoc`` into ``serving/_proto/``, keeping the package
directories: ``proto/feast/types/Value.proto`` becomes ``serving/_proto/feast/types/Value_pb2.py``
(+ ``Value_pb2.pyi`` typed stubs and ``Value_pb2_grpc.py``), importable as
``serving._proto.feast.types.Value_pb2``.

protoc writes imports relative to the proto root (``from feast.types import Value_pb2``); they
are rewritten to absolute imports under ``serving._proto`` so that nothing needs to be put on
``sys.path``. Generation is skipped when every output is newer than every input (the ``.proto``
files and this script).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped,unused-ignore]

PACKAGE = "serving._proto"
"""Import name of the package the generated modules live in."""

_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROTO_DIR = _ROOT / "proto"
DEFAULT_OUT_DIR = _ROOT / "serving" / "_proto"

# Suffixes protoc writes for one ``X.proto``: messages, typed stubs, gRPC stubs.
_OUTPUT_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(proto_dir: Path) -> list[Path]:
    """Every ``.proto`` file under ``proto_dir``, relative to it, sorted."""
    return sorted(p.relative_to(proto_dir) for p in proto_dir.rglob("*.proto"))


def expected_outputs(protos: Sequence[Path], out_dir: Path) -> list[Path]:
    """The files a generation run produces for ``protos`` (including package ``__init__.py``)."""
    outputs: list[Path] = []
    for rel in protos:
        stem = rel.with_suffix("")
        outputs.extend(out_dir / f"{stem}{suffix}" for suffix in _OUTPUT_SUFFIXES)
        outputs.extend(out_dir / parent / "__init__.py" for parent in rel.parents if parent.parts)
    return sorted(set(outputs))


def is_up_to_date(proto_dir: Path, protos: Sequence[Path], out_dir: Path) -> bool:
    """True when every output exists and is newer than every input."""
    inputs = [proto_dir / p for p in protos] + [Path(__file__).resolve()]
    newest_input = max(p.stat().st_mtime_ns for p in inputs)
    try:
        oldest_output = min(p.stat().st_mtime_ns for p in expected_outputs(protos, out_dir))
    except FileNotFoundError:
        return False
    return oldest_output >= newest_input


def rewrite_imports(source: str, roots: Sequence[str]) -> str:
    """Make protoc's root-relative imports absolute under :data:`PACKAGE`.

    protoc emits, for a dependency ``feast/types/Value.proto``::

        from feast.types import Value_pb2 as feast_dot_types_dot_Value__pb2   # _pb2.py
        from feast.types import Value_pb2 as _Value_pb2                       # _pb2.pyi

    which only resolve if the proto root is on ``sys.path``. Every ``from <root>...`` line whose
    first package is one of ``roots`` (the top-level directories under ``proto/``) becomes
    ``from serving._proto.<root>...``. ``google.protobuf`` imports are left alone (the runtime
    ships them).
    """
    if not roots:
        return source
    alternatives = "|".join(re.escape(r) for r in sorted(roots))
    # Anchored at line start (generated code may indent imports inside try blocks); the root
    # must be followed by '.' or ' ' so that e.g. root "feast" leaves "feasty" alone.
    pattern = re.compile(rf"^(\s*)from ({alternatives})([. ])", re.MULTILINE)
    return pattern.sub(rf"\1from {PACKAGE}.\2\3", source)


def generate(proto_dir: Path, out_dir: Path, protos: Sequence[Path]) -> None:
    """Run protoc on ``protos`` and install the post-processed modules into ``out_dir``.

    Output is built in a temporary directory and then replaces the generated top-level package
    directories of ``out_dir`` wholesale, so modules of deleted ``.proto`` files disappear and a
    failed run leaves the previous output untouched. Hand-written files directly in ``out_dir``
    (its ``__init__.py``) are kept.
    """
    include = resources.files("grpc_tools") / "_proto"
    roots = sorted({rel.parts[0] for rel in protos if len(rel.parts) > 1})
    with tempfile.TemporaryDirectory(prefix="fs-codegen-") as tmp:
        tmp_dir = Path(tmp)
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_dir}",
            f"--proto_path={include}",
            f"--python_out={tmp_dir}",
            f"--pyi_out={tmp_dir}",
            f"--grpc_python_out={tmp_dir}",
            *(str(rel) for rel in protos),
        ]
        status = protoc.main(args)
        if status != 0:
            raise SystemExit(f"serving._codegen: protoc failed (exit status {status})")

        for path in tmp_dir.rglob("*"):
            if path.suffix in (".py", ".pyi"):
                path.write_text(rewrite_imports(path.read_text(), roots))
        for rel in protos:
            for parent in rel.parents:
                if parent.parts:
                    init = tmp_dir / parent / "__init__.py"
                    if not init.exists():
                        init.write_text('"""Generated by serving._codegen; do not edit."""\n')

        out_dir.mkdir(parents=True, exist_ok=True)
        for top in sorted({rel.parts[0] for rel in protos}):
            src, dst = tmp_dir / top, out_dir / top
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            shutil.move(src, dst)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving._codegen", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument(
        "--proto-dir", type=Path, default=DEFAULT_PROTO_DIR, help="root of the .proto tree"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT_DIR, help="where the Python modules are written"
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    proto_dir: Path = args.proto_dir.resolve()
    out_dir: Path = args.out.resolve()

    protos = proto_files(proto_dir)
    if not protos:
        print(f"serving._codegen: no .proto files under {proto_dir}", file=sys.stderr)
        return 1
    if not args.force and is_up_to_date(proto_dir, protos, out_dir):
        print(f"serving._codegen: {len(protos)} proto files, {out_dir} is up to date")
        return 0
    generate(proto_dir, out_dir, protos)
    print(f"serving._codegen: generated {len(protos)} proto files into {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
