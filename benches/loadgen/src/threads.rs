//! Per-thread CPU of a process (does every worker get its share of a storm?).

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Thread id -> (name, CPU seconds).
pub(crate) type Threads = BTreeMap<u32, (String, f64)>;

pub(crate) fn sample(pid: u32) -> Threads {
    let mut out = Threads::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map_or("?", |(n, _)| n)
            .to_string();
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            rest.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.insert(tid, (name, (ticks(11) + ticks(12)) / 100.0));
    }
    out
}

/// CPU seconds each thread spent between two samples, as `[{"thread", "cpu_s"}]`.
pub(crate) fn delta(before: &Threads, after: &Threads) -> Value {
    let rows: Vec<Value> = after
        .iter()
        .map(|(tid, (name, cpu))| {
            let was = before.get(tid).map_or(0.0, |(_, c)| *c);
            json!({"tid": tid, "thread": name, "cpu_s": ((cpu - was) * 100.0).round() / 100.0})
        })
        .collect();
    Value::Array(rows)
}
