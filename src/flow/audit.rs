//! What is recorded of each decision: the access-log fields, counters and a log line.

use crate::decision::Audit;
use crate::host::Host;

/// Logs, counts and records for the access log what was decided. Never a token.
pub(super) fn report_decision<H: Host>(
    host: &H,
    context_id: u32,
    request_id: &str,
    method: &str,
    audit: &Audit,
) {
    let shadows = if audit.shadows.is_empty() {
        std::borrow::Cow::Borrowed("-")
    } else {
        audit.shadows.join(",").into()
    };
    let fields = [
        ("lookergate_verdict", audit.verdict),
        (
            "lookergate_subject",
            audit.subject.as_deref().unwrap_or("-"),
        ),
        ("lookergate_issuer", audit.issuer.as_deref().unwrap_or("-")),
        ("lookergate_groups", audit.groups.as_deref().unwrap_or("-")),
        (
            "lookergate_operation",
            audit.operation.as_deref().unwrap_or("-"),
        ),
        ("lookergate_rule", audit.rule.as_deref().unwrap_or("-")),
        (
            "lookergate_identity",
            audit.identity.as_deref().unwrap_or("-"),
        ),
        ("lookergate_reason", audit.reason.as_deref().unwrap_or("-")),
        ("lookergate_shadow", shadows.as_ref()),
    ];
    // Unset fields print as "-" in the access log anyway: skip their hostcalls.
    let mut set = fields;
    let mut n = 0;
    for field in fields {
        if field.1 != "-" {
            if let Some(slot) = set.get_mut(n) {
                *slot = field;
                n += 1;
            }
        }
    }
    host.record_audit(set.get(..n).unwrap_or_default());
    match audit.verdict {
        "allow" => host.count("lookergate.decision.allow", 1),
        _ => host.count(
            &format!(
                "lookergate.decision.deny.{}",
                audit.reason.as_deref().unwrap_or("unknown")
            ),
            1,
        ),
    }
    for shadow in &audit.shadows {
        host.count(
            &format!("lookergate.shadow.{}", shadow.replace(':', ".would_")),
            1,
        );
    }
    let level = if audit.verdict == "allow" && audit.shadows.is_empty() {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    if log::log_enabled!(level) {
        let line = fields
            .iter()
            .map(|(k, v)| format!("{}={v}", k.trim_start_matches("lookergate_")))
            .collect::<Vec<_>>()
            .join(" ");
        log::log!(
            level,
            "lookergate[{context_id}] request_id={request_id} method={method} {line}"
        );
    }
}
