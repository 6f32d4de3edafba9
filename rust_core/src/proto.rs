//! Protobuf messages (prost), written from proto/.
