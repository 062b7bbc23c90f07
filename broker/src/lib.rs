//! lookergate token broker.
