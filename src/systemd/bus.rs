//! systemd and machined over D-Bus (zbus): typed proxies, and transient build services.
//!
//! A build's unit is described by [`TransientService`], plain data that turns into
//! `StartTransientUnit`'s `a(sv)` properties; the proxies below carry it to systemd.
//! `MachinesProxy` (machined) lists machines and images; the nspawn backend's machines register
//! themselves (`systemd-nspawn --register=yes`), so the daemon does not call it yet.

use zbus::{OwnedObjectPath, Variant};

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait Manager {
    /// `StartTransientUnit(s name, s mode, a(sv) properties, a(sa(sv)) aux) -> o job`
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Variant<'_>)],
        aux: &[(&str, &[(&str, Variant<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Ask for signals (JobRemoved) to be sent to this client.
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Unit", default_service = "org.freedesktop.systemd1")]
pub trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.machine1.Manager",
    default_service = "org.freedesktop.machine1",
    default_path = "/org/freedesktop/machine1"
)]
pub trait Machines {
    /// `(name, class, service, path)` of every registered machine.
    fn list_machines(&self) -> zbus::Result<Vec<(String, String, String, OwnedObjectPath)>>;
    /// `(name, type, read_only, created, modified, usage, path)` of every image.
    fn list_images(&self) -> zbus::Result<Vec<(String, String, bool, u64, u64, u64, OwnedObjectPath)>>;
}

/// A transient service for one build: what `systemctl show` will list for it.
#[derive(Debug, Clone, PartialEq)]
pub struct TransientService {
    /// `buildbay-build-….service`.
    pub name: String,
    pub description: String,
    pub exec_start: Vec<String>,
    /// Runs after the main process ended however it ended (`$SERVICE_RESULT`, `$EXIT_STATUS`).
    pub exec_stop_post: Vec<String>,
    pub working_directory: String,
    pub user: Option<String>,
    pub environment: Vec<String>,
    pub memory_max: Option<u64>,
    pub cpu_weight: Option<u64>,
    pub tasks_max: Option<u64>,
    pub runtime_max_sec: Option<u64>,
    /// `KEY=value` fields the journal adds to every line of the unit.
    pub log_extra_fields: Vec<String>,
    /// More properties as they are (the sandbox).
    pub extra: Vec<(&'static str, Prop)>,
}

/// A property value, before it becomes a D-Bus variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Prop {
    Str(String),
    Bool(bool),
    U32(u32),
    U64(u64),
    Strs(Vec<String>),
    /// `a(sasb)`: path, argv, ignore-failure.
    Exec(Vec<(String, Vec<String>, bool)>),
    /// `aay`.
    Bytes(Vec<Vec<u8>>),
    /// `(bas)`, an allow list: SystemCallFilter.
    SyscallFilter(Vec<String>),
    /// `(bas)`, an allow list: RestrictAddressFamilies.
    Families(Vec<String>),
    /// `a(iayu)`: IPAddressAllow, IPAddressDeny.
    Ips(Vec<IpPrefix>),
}

/// An address prefix, as IPAddressAllow= takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    pub addr: std::net::IpAddr,
    pub len: u8,
}

impl IpPrefix {
    pub fn host(addr: std::net::IpAddr) -> IpPrefix {
        IpPrefix { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }

    /// Every IPv4 and IPv6 address.
    pub fn any() -> [IpPrefix; 2] {
        [
            IpPrefix { addr: std::net::Ipv4Addr::UNSPECIFIED.into(), len: 0 },
            IpPrefix { addr: std::net::Ipv6Addr::UNSPECIFIED.into(), len: 0 },
        ]
    }

    /// `(family, address bytes, prefix length)`.
    fn wire(&self) -> (i32, Vec<u8>, u32) {
        match self.addr {
            std::net::IpAddr::V4(a) => (2, a.octets().to_vec(), u32::from(self.len)),
            std::net::IpAddr::V6(a) => (10, a.octets().to_vec(), u32::from(self.len)),
        }
    }
}

impl TransientService {
    /// The `a(sv)` properties of `StartTransientUnit`.
    pub fn properties(&self) -> Vec<(&'static str, Prop)> {
        let exec = |argv: &[String]| Prop::Exec(vec![(argv[0].clone(), argv.to_vec(), false)]);
        let mut p = vec![
            ("Description", Prop::Str(self.description.clone())),
            ("Type", Prop::Str("exec".into())),
            ("ExecStart", exec(&self.exec_start)),
            ("WorkingDirectory", Prop::Str(self.working_directory.clone())),
            ("KillMode", Prop::Str("control-group".into())),
            // The result is read from files the unit writes; failed units need no reset-failed.
            ("CollectMode", Prop::Str("inactive-or-failed".into())),
            ("Environment", Prop::Strs(self.environment.clone())),
            ("LogExtraFields", Prop::Bytes(self.log_extra_fields.iter().map(|f| f.as_bytes().to_vec()).collect())),
        ];
        if !self.exec_stop_post.is_empty() {
            p.push(("ExecStopPost", exec(&self.exec_stop_post)));
        }
        if let Some(u) = &self.user {
            p.push(("User", Prop::Str(u.clone())));
        }
        if let Some(m) = self.memory_max {
            p.push(("MemoryMax", Prop::U64(m)));
            // Without swap accounting a memory limit only pushes the build into swap.
            p.push(("MemorySwapMax", Prop::U64(0)));
        }
        if let Some(w) = self.cpu_weight {
            p.push(("CPUWeight", Prop::U64(w)));
        }
        if let Some(t) = self.tasks_max {
            p.push(("TasksMax", Prop::U64(t)));
        }
        if let Some(s) = self.runtime_max_sec {
            p.push(("RuntimeMaxUSec", Prop::U64(s.saturating_mul(1_000_000))));
        }
        p.extend(self.extra.iter().cloned());
        p
    }
}

fn variant(p: &Prop) -> Variant<'static> {
    match p {
        Prop::Str(s) => Variant::from(s.clone()),
        Prop::Bool(b) => Variant::from(*b),
        Prop::U32(n) => Variant::from(*n),
        Prop::U64(n) => Variant::from(*n),
        Prop::Strs(v) => Variant::from(v.clone()),
        Prop::Exec(v) => Variant::from(v.clone()),
        Prop::Bytes(v) => Variant::from(v.clone()),
        Prop::SyscallFilter(v) | Prop::Families(v) => Variant::from((true, v.clone())),
        Prop::Ips(v) => Variant::from(v.iter().map(IpPrefix::wire).collect::<Vec<_>>()),
    }
}

/// The system bus with systemd behind it.
#[derive(Clone)]
pub struct Systemd {
    conn: zbus::Connection,
}

/// How a unit is doing, as far as a build cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    /// Loaded and activating, active or deactivating.
    Running,
    /// Not loaded (never started, or finished and collected), or inactive/failed.
    Gone,
}

impl Systemd {
    /// Connect to the system bus and make sure systemd answers there.
    pub async fn connect() -> zbus::Result<Systemd> {
        let conn = zbus::Connection::system().await?;
        let m = ManagerProxy::new(&conn).await?;
        let version = m.version().await?;
        // JobRemoved is sent to subscribed clients; once per connection (a second time is an error).
        m.subscribe().await?;
        tracing::info!(systemd = %version, "builds run as transient systemd units (D-Bus)");
        Ok(Systemd { conn })
    }

    async fn manager(&self) -> zbus::Result<ManagerProxy<'_>> {
        ManagerProxy::new(&self.conn).await
    }

    /// Start a transient service and wait until its start job finished; `Err` unless it started.
    pub async fn start(&self, svc: &TransientService) -> zbus::Result<()> {
        use futures_util::StreamExt;
        let m = self.manager().await?;
        let mut removed = m.receive_job_removed().await?;
        let props: Vec<(&str, Variant<'_>)> = svc.properties().iter().map(|(k, v)| (*k, variant(v))).collect();
        let job = m.start_transient_unit(&svc.name, "fail", &props, &[]).await?;
        while let Some(sig) = removed.next().await {
            let args = sig.args()?;
            if args.job.as_str() == job.as_str() {
                return match args.result.as_str() {
                    "done" => Ok(()),
                    other => Err(zbus::Error::Failure(format!("start job of {} ended: {other}", svc.name))),
                };
            }
        }
        Err(zbus::Error::Failure(format!("lost the bus while starting {}", svc.name)))
    }

    /// Stop a unit and everything in its cgroup (KillMode=control-group).
    pub async fn stop(&self, name: &str) -> zbus::Result<()> {
        match self.manager().await?.stop_unit(name, "replace").await {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(n, _, _)) if n.as_str().ends_with("NoSuchUnit") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn state(&self, name: &str) -> zbus::Result<UnitState> {
        let path = match self.manager().await?.get_unit(name).await {
            Ok(p) => p,
            Err(zbus::Error::MethodError(n, _, _)) if n.as_str().ends_with("NoSuchUnit") => {
                return Ok(UnitState::Gone);
            }
            Err(e) => return Err(e),
        };
        let unit = UnitProxy::builder(&self.conn).path(path).build().await?;
        Ok(match unit.active_state().await?.as_str() {
            "inactive" | "failed" => UnitState::Gone,
            _ => UnitState::Running,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_unit_properties() {
        let svc = TransientService {
            name: "buildbay-build-hello-1.0-x-amd64.service".into(),
            description: "build".into(),
            exec_start: vec!["/usr/bin/sbuild".into(), "--arch=amd64".into()],
            exec_stop_post: vec!["/usr/bin/buildbay".into(), "builder-exec".into()],
            working_directory: "/var/lib/buildbay/var/builds/x".into(),
            user: Some("buildbay".into()),
            environment: vec!["HOME=/x".into()],
            memory_max: Some(1 << 30),
            cpu_weight: Some(50),
            tasks_max: None,
            runtime_max_sec: Some(3600),
            log_extra_fields: vec!["BUILDBAY_SOURCE=hello".into()],
            extra: vec![("ProtectSystem", Prop::Str("strict".into())), ("PrivateTmp", Prop::Bool(true))],
        };
        let p: std::collections::BTreeMap<_, _> = svc.properties().into_iter().collect();
        assert_eq!(p["KillMode"], Prop::Str("control-group".into()));
        assert_eq!(p["RuntimeMaxUSec"], Prop::U64(3_600_000_000));
        assert_eq!(p["MemoryMax"], Prop::U64(1 << 30));
        assert_eq!(p["User"], Prop::Str("buildbay".into()));
        assert_eq!(p["LogExtraFields"], Prop::Bytes(vec![b"BUILDBAY_SOURCE=hello".to_vec()]));
        let Prop::Exec(e) = &p["ExecStart"] else { panic!("ExecStart is a(sasb)") };
        assert_eq!(e[0].0, "/usr/bin/sbuild");
        assert_eq!(e[0].1, vec!["/usr/bin/sbuild".to_owned(), "--arch=amd64".to_owned()]);
        assert!(!p.contains_key("TasksMax"));
        assert_eq!(p["PrivateTmp"], Prop::Bool(true));
        // Every variant converts to a D-Bus value.
        for v in p.values() {
            let _ = variant(v);
        }
    }
}
