//! How the binary's work fails: a usage error or a failure to serve, each
//! with its exit code. Every module returns it; it imports nothing.

/// A failure and the exit code it deserves.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad flags or configuration: exit code 2.
    Usage(String),
    /// Serving failed: exit code 1.
    Run(String),
}
