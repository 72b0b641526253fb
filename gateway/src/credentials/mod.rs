//! Who may do what: the hub's config file and its credentials (agents,
//! callers, admins), the settings a config file gives any subcommand, and
//! `grpctunnel token`.

pub(crate) mod auth;
pub(crate) mod config;
pub(crate) mod settings;
pub(crate) mod token;
