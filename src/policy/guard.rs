//! Query guardrails: a guarded rule's limits on the query a request runs.

use super::{QueryFacts, QueryGuard, LOOKER_DEFAULT_LIMIT};

impl QueryGuard {
    /// Checks a query against the guardrails. The error names the field that failed,
    /// never the allowed values (the client learns nothing of the policy from it).
    pub fn check(&self, q: &QueryFacts) -> Result<(), String> {
        if !self.models.is_empty() && !q.model.as_ref().is_some_and(|m| self.models.contains(m)) {
            return Err(format!(
                "query.model {:?} is not allowed by this rule",
                q.model.as_deref().unwrap_or("")
            ));
        }
        if !self.views.is_empty() && !q.view.as_ref().is_some_and(|v| self.views.contains(v)) {
            return Err(format!(
                "query.view {:?} is not allowed by this rule",
                q.view.as_deref().unwrap_or("")
            ));
        }
        if let Some(max) = self.max_limit {
            match q.limit {
                Some(limit) if limit < 0 => {
                    return Err(format!(
                        "query.limit {limit} means no limit, above the maximum {max}"
                    ))
                }
                None | Some(0) if LOOKER_DEFAULT_LIMIT > max => {
                    return Err(format!(
                        "query.limit is not set, so Looker's default of {LOOKER_DEFAULT_LIMIT} rows applies, above the maximum {max}"
                    ))
                }
                Some(limit) if limit > max => {
                    return Err(format!("query.limit {limit} exceeds the maximum {max}"))
                }
                _ => {}
            }
        }
        for field in &self.required_filters {
            let mut values = q.filters.iter().filter(|(f, _)| f == field);
            match values.next() {
                None => return Err(format!("query.filters must filter on {field:?}")),
                Some((_, value)) if value.trim().is_empty() => {
                    return Err(format!("query.filters[{field:?}] must not be empty"))
                }
                Some(_) => {}
            }
        }
        if q.filter_expression && !self.allow_filter_expression {
            return Err("query.filter_expression is not allowed by this rule".to_owned());
        }
        if q.filter_config && !self.allow_filter_config {
            return Err("query.filter_config is not allowed by this rule".to_owned());
        }
        Ok(())
    }
}
