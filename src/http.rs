//! Plain HTTP data the host reads and writes: a change to the request headers and a
//! local reply. The floor of the crate: it imports nothing, so `host` can stay below
//! every module that decides.

/// One change to the request headers before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Remove(String),
    Set(String, String),
}

/// A local reply ready for `send_http_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}
