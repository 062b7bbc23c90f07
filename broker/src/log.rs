//! Structured logs: one JSON object per line on stderr (audit lines use the same stream).

use serde_json::{json, Map, Value};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn emit(level: &str, event: &str, fields: Value) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as f64 / 1000.0)
        .unwrap_or(0.0);
    let mut line = Map::new();
    line.insert("ts".into(), json!(ts));
    line.insert("level".into(), json!(level));
    line.insert("event".into(), json!(event));
    match fields {
        Value::Object(f) => line.extend(f),
        Value::Null => {}
        other => {
            line.insert("detail".into(), other);
        }
    }
    let mut err = std::io::stderr().lock();
    // Nothing sensible to do if stderr is gone.
    let _ = writeln!(err, "{}", Value::Object(line));
}

pub fn info(event: &str, fields: Value) {
    emit("info", event, fields);
}

pub fn warn(event: &str, fields: Value) {
    emit("warn", event, fields);
}

pub fn error(event: &str, fields: Value) {
    emit("error", event, fields);
}
