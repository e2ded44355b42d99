//! The HTTP client every outgoing request uses (upstream archives, remotes, ports, the
//! keyserver): buildbay's user agent, a status never taken for an error (callers tell a 404 from
//! a 5xx themselves), and a timeout for the whole request. Callers bound what they read.

use std::time::Duration;

/// An agent whose requests take at most `timeout` in all and follow at most `max_redirects`.
pub fn agent(timeout: Duration, max_redirects: u32) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(max_redirects)
        .timeout_global(Some(timeout))
        .user_agent(concat!("buildbay/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}
