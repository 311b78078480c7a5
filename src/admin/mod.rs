//! Operator-facing endpoints beside the data path. The metrics and health endpoint
//! (`--metrics`) arrives with the observability issue; the address is accepted today so
//! that deployments can set it once.
