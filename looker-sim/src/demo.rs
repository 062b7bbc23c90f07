//! The embedded demo instance: the users and API3 keys of `docs/DESIGN.md`, a couple of
//! dashboards and looks on model `thelook`, and the rows behind its `orders` explore.

use serde_json::{json, Value};

use crate::explore::QuerySpec;

/// The admin user: the only one allowed to sudo and to manage API3 keys.
pub const ADMIN_USER_ID: u64 = 1;

/// A Looker user as the simulator knows it.
#[derive(Debug, Clone)]
pub struct DemoUser {
    pub id: u64,
    pub display_name: String,
    pub email: String,
}

/// `(id, display name, email)`, as in DESIGN.md.
const USERS: [(u64, &str, &str); 6] = [
    (1, "Admin", "admin@example.com"),
    (101, "svc-analyst", "svc-analyst@example.com"),
    (102, "svc-viewer", "svc-viewer@example.com"),
    (201, "Alice", "alice@example.com"),
    (202, "Bob", "bob@example.com"),
    (203, "Carol", "carol@example.com"),
];

/// `(user id, client_id, client_secret)`: demo API3 keys, never to be used elsewhere.
const API3_KEYS: [(u64, &str, &str); 3] = [
    (1, "demo-admin-id", "demo-admin-secret"),
    (101, "demo-analyst-id", "demo-analyst-secret"),
    (102, "demo-viewer-id", "demo-viewer-secret"),
];

/// When the demo keys were "created" (Looker's timestamp format).
pub const DEMO_CREATED_AT: &str = "2026-01-01T00:00:00.000+00:00";

pub fn users() -> Vec<DemoUser> {
    USERS
        .iter()
        .map(|&(id, display_name, email)| DemoUser {
            id,
            display_name: display_name.to_owned(),
            email: email.to_owned(),
        })
        .collect()
}

/// The first id of the extra users `--users` adds (`user-<n>@example.com`, n from 1).
pub const EXTRA_USER_IDS: u64 = 100_000;

/// `count` extra Looker users for load tests: `user-<n>@example.com`, ids 100001...
pub fn extra_users(count: u64) -> impl Iterator<Item = DemoUser> {
    (1..=count).map(|n| DemoUser {
        id: EXTRA_USER_IDS + n,
        display_name: format!("User {n}"),
        email: format!("user-{n}@example.com"),
    })
}

pub fn api3_keys() -> impl Iterator<Item = (u64, &'static str, &'static str)> {
    API3_KEYS.into_iter()
}

/// Saved queries behind the demo looks, ids 1 and 2.
pub fn saved_queries() -> Vec<QuerySpec> {
    vec![
        QuerySpec {
            model: "thelook".into(),
            view: "orders".into(),
            fields: vec!["orders.status".into(), "orders.count".into()],
            sorts: vec!["orders.count desc".into()],
            limit: Some(500),
            filters: Default::default(),
        },
        QuerySpec {
            model: "thelook".into(),
            view: "orders".into(),
            fields: vec!["users.state".into(), "orders.count".into()],
            filters: [("orders.status".to_owned(), "complete".to_owned())]
                .into_iter()
                .collect(),
            sorts: vec!["users.state".into()],
            limit: Some(500),
        },
    ]
}

/// `GET /dashboards/{id}` bodies (a subset of Looker's `Dashboard` fields).
pub fn dashboard(id: &str) -> Option<Value> {
    let (title, description, look_ids): (&str, &str, &[&str]) = match id {
        "1" => ("Business Pulse", "Orders at a glance", &["1", "2"]),
        "2" => ("Order Status", "Where orders stand", &["1"]),
        _ => return None,
    };
    let elements: Vec<Value> = look_ids
        .iter()
        .enumerate()
        .map(|(n, look_id)| {
            json!({
                "id": format!("{id}{n}"),
                "dashboard_id": id,
                "look_id": look_id,
                "type": "vis",
                "title": look(look_id).and_then(|l| l.get("title").cloned()),
            })
        })
        .collect();
    Some(json!({
        "can": {"download": true, "see_lookml_dashboards": true, "index": true, "show": true, "copy": true},
        "id": id,
        "title": title,
        "description": description,
        // The spec's `LookModel` is not nullable: the model its tiles query.
        "model": {"id": "thelook", "label": "The Look"},
        "folder_id": "1",
        "folder": {"id": "1", "name": "Shared", "parent_id": null},
        "user_id": "1",
        "hidden": false,
        "readonly": false,
        "deleted": false,
        "query_timezone": "UTC",
        "created_at": DEMO_CREATED_AT,
        "updated_at": DEMO_CREATED_AT,
        "slug": format!("demo-dashboard-{id}"),
        "dashboard_elements": elements,
        "dashboard_filters": [],
        "url": format!("/dashboards/{id}"),
    }))
}

/// `GET /looks/{id}` bodies (Looker's `LookWithQuery`, abridged).
pub fn look(id: &str) -> Option<Value> {
    let (title, query_id) = match id {
        "1" => ("Orders by Status", 1),
        "2" => ("Completed Orders by State", 2),
        _ => return None,
    };
    let query = saved_queries()
        .into_iter()
        .nth(query_id - 1)
        .map(|q| q.to_looker_json(query_id as u64));
    Some(json!({
        "can": {"download": true, "index": true, "show": true, "copy": true, "run": true},
        "id": id,
        "title": title,
        "description": null,
        "model": {"id": "thelook", "label": "The Look"},
        "folder_id": "1",
        "user_id": "1",
        "public": false,
        "deleted": false,
        "query_id": query_id.to_string(),
        "query": query,
        "created_at": DEMO_CREATED_AT,
        "updated_at": DEMO_CREATED_AT,
        "url": format!("/looks/{id}"),
        "short_url": format!("/x/demo-look-{id}"),
    }))
}

/// One row of the `orders` explore (joined with `users`).
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub id: u64,
    pub status: &'static str,
    pub created_date: String,
    pub user_state: &'static str,
    /// The user's sales region, derived from the state: what embed users' `region`
    /// user attribute filters on (row-level security).
    pub user_region: &'static str,
}

/// `users.region` for a state: west, east or central.
pub fn region_of(state: &str) -> &'static str {
    match state {
        "California" | "Washington" => "west",
        "New York" => "east",
        _ => "central",
    }
}

/// 40 deterministic orders: statuses, dates and states cycle so groupings are uneven.
pub fn orders() -> Vec<OrderRow> {
    const STATUSES: [&str; 4] = ["complete", "pending", "complete", "cancelled"];
    const STATES: [&str; 5] = [
        "California",
        "New York",
        "Texas",
        "California",
        "Washington",
    ];
    (1..=40u64)
        .map(|id| {
            let user_state = STATES
                .get((id % 5) as usize)
                .copied()
                .unwrap_or("California");
            OrderRow {
                id,
                status: STATUSES
                    .get((id % 4) as usize)
                    .copied()
                    .unwrap_or("complete"),
                created_date: format!("2026-01-{:02}", (id * 7) % 28 + 1),
                user_state,
                user_region: region_of(user_state),
            }
        })
        .collect()
}
