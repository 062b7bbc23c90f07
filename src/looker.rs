//! Looker API 4.0 operations: the table generated from Looker's OpenAPI spec
//! (`tools/gen_operations.py` writes `proto/operations.tsv`), compiled once into a segment
//! trie that resolves a request to its operation. One definition for every program:
//! `lookergate_proto::operations`.

pub use lookergate_proto::operations::{
    ActivityType, Operation, OperationTable, Resolution, Status, API_PREFIX, OPERATIONS_TSV,
};
