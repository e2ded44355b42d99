//! `buildbay api`: the command-line client of the API, with mini-buildd-api's semantics. Its
//! command line is generated from the call registry.

use crate::api::registry::{self, Call, Kind};
use crate::api::{ApiError, Args};
use std::io::Read;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {url}: {reason}; is buildbay running there? (--url)")]
    Connect { url: String, reason: String },
    #[error("{detail} (HTTP {status})")]
    Api { status: u16, detail: String },
    #[error("login as {0} failed: wrong user name or password, or too many attempts")]
    Login(String),
}

/// Build the `clap` command of one call from the registry.
pub fn command(call: &Call) -> clap::Command {
    let mut cmd = clap::Command::new(call.name).about(call.doc);
    for a in call.args {
        let mut arg = clap::Arg::new(a.name).help(a.doc);
        if a.positional {
            arg = arg.required(a.default == registry::Default::Required);
            if a.kind == Kind::List {
                // The last positional argument: one or more values (or one, comma-separated).
                arg = arg.num_args(1..).action(clap::ArgAction::Append);
            }
        } else {
            arg = arg.long(a.name.replace('_', "-"));
            if let Some(s) = a.short {
                arg = arg.short(s);
            }
            arg = match a.kind {
                Kind::Bool => arg.action(clap::ArgAction::SetTrue),
                Kind::List => arg.num_args(1..).action(clap::ArgAction::Append),
                _ => arg.required(a.default == registry::Default::Required),
            };
        }
        if !a.choices.is_empty() {
            arg = arg.value_parser(a.choices.to_vec());
        }
        if a.kind == Kind::Multiline {
            // A key's text starts with `-----BEGIN`: a value, not an option.
            arg = arg.allow_hyphen_values(true);
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

/// The top-level `api` command: one subcommand per call.
pub fn api_command() -> clap::Command {
    registry::CALLS.iter().fold(
        clap::Command::new("buildbay api")
            .about("Call the API of a running buildbay (or mini-buildd)")
            .subcommand_required(true),
        |c, call| c.subcommand(command(call)),
    )
}

/// Turn parsed command-line matches into the call's wire arguments.
pub fn args_from_matches(call: &'static Call, m: &clap::ArgMatches) -> Result<Args, ApiError> {
    let mut q: Vec<(String, String)> = Vec::new();
    for a in call.args {
        let v = match a.kind {
            Kind::Bool => m.get_flag(a.name).then(|| "True".to_owned()),
            Kind::List => m.get_many::<String>(a.name).map(|vs| vs.cloned().collect::<Vec<_>>().join(",")),
            _ => m.get_one::<String>(a.name).cloned(),
        };
        if let Some(v) = v {
            q.push((a.name.to_owned(), v));
        }
    }
    Args::from_query(call, q.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    cookies: Option<(String, String)>,
}

fn set_cookie(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        let (k, rest) = c.split_once('=')?;
        (k.trim() == name).then(|| rest.split(';').next().unwrap_or_default().to_owned())
    })
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> Client {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
        Client { agent, base: url.trim_end_matches('/').to_owned(), token, cookies: None }
    }

    fn connect_err(&self, e: ureq::Error) -> ClientError {
        ClientError::Connect { url: self.base.clone(), reason: e.to_string() }
    }

    /// mini-buildd's login: a csrftoken from the form, the form posted, a session cookie back.
    pub fn login(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        let url = format!("{}/accounts/login/", self.base);
        let r = self.agent.get(&url).call().map_err(|e| self.connect_err(e))?;
        let csrf = set_cookie(&r, "csrftoken").ok_or_else(|| ClientError::Login(user.into()))?;
        let r = self
            .agent
            .post(&url)
            .header("cookie", format!("csrftoken={csrf}"))
            .header("referer", &self.base)
            .send_form([
                ("username", user),
                ("password", password),
                ("csrfmiddlewaretoken", csrf.as_str()),
                ("this_is_the_login_form", "1"),
                ("next", "/accounts/null/"),
            ])
            .map_err(|e| self.connect_err(e))?;
        let session = (r.status().as_u16() == 302).then(|| set_cookie(&r, "sessionid")).flatten();
        let session = session.ok_or_else(|| ClientError::Login(user.into()))?;
        // The session's own CSRF token, when the server gives one.
        let csrf = set_cookie(&r, "csrftoken").unwrap_or(csrf);
        self.cookies = Some((csrf, session));
        Ok(())
    }

    /// Call the API; returns the JSON result.
    pub fn call(&self, args: &Args, confirm: bool) -> Result<serde_json::Value, ClientError> {
        let mut query = args.to_query();
        if confirm {
            query.push(("confirm".into(), args.call.name.into()));
        }
        query.push(("output".into(), "json".into()));
        let url = format!("{}/mini_buildd/api/{}/", self.base, args.call.name);
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &self.token {
            headers.push(("authorization", format!("Bearer {t}")));
        }
        if let Some((csrf, session)) = &self.cookies {
            headers.push(("cookie", format!("csrftoken={csrf}; sessionid={session}")));
            headers.push(("x-csrftoken", csrf.clone()));
        }
        // Secrets never go into a URL: such calls are a POSTed form.
        let secret = args.call.args.iter().any(|a| a.kind == Kind::Secret);
        let result = if secret {
            let mut req = self.agent.post(&url);
            for (k, v) in &headers {
                req = req.header(*k, v.as_str());
            }
            req.send_form(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        } else {
            let mut req = self.agent.get(&url);
            for (k, v) in &query {
                req = req.query(k, v);
            }
            for (k, v) in &headers {
                req = req.header(*k, v.as_str());
            }
            req.call()
        };
        let mut r = result.map_err(|e| self.connect_err(e))?;
        let status = r.status().as_u16();
        let mut body = String::new();
        r.body_mut()
            .as_reader()
            .read_to_string(&mut body)
            .map_err(|e| ClientError::Connect { url: self.base.clone(), reason: e.to_string() })?;
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
        if !(200..300).contains(&status) {
            let detail =
                value.get("detail").and_then(|d| d.as_str()).map(str::to_owned).unwrap_or_else(|| value.to_string());
            return Err(ClientError::Api { status, detail });
        }
        Ok(value)
    }
}

/// How mini-buildd-api prints a result: strings as they are, anything else as pretty JSON.
pub fn render(value: &serde_json::Value, json: bool) -> String {
    match value {
        serde_json::Value::String(s) if !json => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_maps_to_the_wire() {
        let call = registry::find("sources_list").unwrap();
        let m = command(call)
            .try_get_matches_from(["sources_list", "-C", "sid", "bookworm", "-T", "deb", "deb-src", "-r", "2", "-X"])
            .unwrap();
        let args = args_from_matches(call, &m).unwrap();
        let q = args.to_query();
        assert!(q.contains(&("codenames".into(), "sid,bookworm".into())));
        assert!(q.contains(&("types".into(), "deb,deb-src".into())));
        assert!(q.contains(&("rollbacks".into(), "2".into())));
        assert!(q.contains(&("with_extra".into(), "True".into())));
        let migrate = registry::find("migrate").unwrap();
        assert!(command(migrate).try_get_matches_from(["migrate", "hello"]).is_err(), "distribution is required");
        let m =
            command(migrate).try_get_matches_from(["migrate", "hello", "bookworm-test-unstable", "--full"]).unwrap();
        let q = args_from_matches(migrate, &m).unwrap().to_query();
        assert_eq!(q[0], ("source".into(), "hello".into()));
        assert!(q.contains(&("full".into(), "True".into())));
        // Every call builds a valid command.
        api_command().debug_assert();
    }
}
