//! Durations written the way operators write them: `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"7d"`.
//! One definition for every program: `lookergate_proto::duration`.

pub use lookergate_proto::duration::{deserialize, parse, PATTERN};
