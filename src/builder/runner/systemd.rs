//! The systemd runner: each build is a transient service `buildbay-build-<bkey>.service`,
//! started over D-Bus, with resource limits, journal fields and a sandbox (see [`sandbox`]).
//! ExecStopPost records how the unit ended, however it ended.

use super::{Launch, Launched, Runner, Unit};
use crate::builder::backend::Network;
use crate::builder::stage::Stager;
use crate::builder::{BuilderError, Job};
use crate::protocol::Backend;
use crate::systemd::bus::{IpPrefix, Prop, Systemd, TransientService, UnitState};

/// One build to stage and start from its signed request.
pub struct Stage<'a> {
    pub bkey: &'a crate::protocol::BuildKey,
    pub slot: usize,
    /// The signed request's bytes.
    pub request: &'a [u8],
    /// The keys it must be signed by.
    pub certs: &'a [crate::gpg::Cert],
    /// The daemon's group, which reads the build directory (a helper stages for a daemon that
    /// is not root).
    pub group: Option<u32>,
    /// The build, or its checks after it succeeded.
    pub phase: crate::builder::Phase,
}

pub struct SystemdRunner {
    bus: Systemd,
    stager: Stager,
}

impl SystemdRunner {
    pub fn new(bus: Systemd, stager: Stager) -> SystemdRunner {
        SystemdRunner { bus, stager }
    }

    /// Stage a build from its signed request and tar, and start its unit: what the daemon does
    /// as root, and what the helper does for a daemon that is not (`group`: the daemon's).
    pub async fn stage_and_start(&self, b: Stage<'_>, tar: &mut std::fs::File) -> Result<Launched, BuilderError> {
        // Verifying, unpacking and checking the apt cache block: off the async workers (the
        // daemon and the helper run on the multi-threaded runtime).
        if b.phase == crate::builder::Phase::Checks {
            return self.start_checks(b, tar).await;
        }
        let staged =
            tokio::task::block_in_place(|| self.stager.stage(b.bkey, b.slot, b.request, tar, b.certs, true, b.group))?;
        self.start(&staged.unit).await?;
        Ok(Launched { job: staged.job, machine: staged.machine, backend: staged.backend })
    }

    /// Start the checks of a build whose unit has ended well, in a unit of their own. The build's
    /// end moves to `result.build` first (and back when the unit cannot start).
    async fn start_checks(&self, b: Stage<'_>, tar: &mut std::fs::File) -> Result<Launched, BuilderError> {
        let build_unit = crate::builder::unit_name(b.bkey);
        if self.bus.state(&build_unit).await? != UnitState::Gone {
            return Err(BuilderError::Helper(format!("{build_unit} still runs; its checks start after it")));
        }
        let check_unit = crate::builder::check_unit_name(b.bkey);
        if self.bus.state(&check_unit).await? != UnitState::Gone {
            return Err(BuilderError::Helper(format!("{check_unit} runs already")));
        }
        let staged = tokio::task::block_in_place(|| self.stager.stage_checks(b.bkey, b.slot, b.request, tar, b.certs))?;
        let dir = &staged.job.dir;
        let (result, build_result) = (dir.join(crate::builder::RESULT), dir.join(crate::builder::BUILD_RESULT));
        std::fs::rename(&result, &build_result).map_err(crate::builder::io_err(&result))?;
        if let Err(e) = self.start(&staged.unit).await {
            let _ = std::fs::rename(&build_result, &result);
            return Err(e);
        }
        Ok(Launched { job: staged.job, machine: staged.machine, backend: staged.backend })
    }

    async fn start(&self, unit: &Unit) -> Result<(), BuilderError> {
        if unit.backend == Backend::Nspawn {
            for d in ["locks", "propagate"] {
                let p = std::path::Path::new(NSPAWN_RUN).join(d);
                std::fs::create_dir_all(&p).map_err(crate::builder::io_err(&p))?;
            }
        }
        self.bus.start(&service(unit)).await?;
        Ok(())
    }

    /// Whether a build's unit has ended (see [`Runner::ended`]), for a caller that may not
    /// write its directory (`record`: write "lost" when it vanished).
    pub async fn unit_ended(&self, job: &Job, record: bool) -> Result<bool, BuilderError> {
        let result = job.dir.join(crate::builder::RESULT);
        if result.exists() {
            return Ok(true);
        }
        let gone = self.bus.state(&job.unit).await? == UnitState::Gone;
        if gone && record && !result.exists() {
            // ExecStopPost always runs; without its file the unit was lost (e.g. a reboot).
            crate::builder::write_result(&result, &crate::builder::Ended::new("lost", "-", "-"))?;
        }
        Ok(gone)
    }

    pub async fn stop_unit(&self, job: &Job) -> Result<(), BuilderError> {
        self.stop_named(&job.unit).await
    }

    /// Stop a unit by its name (a `buildbay-build-*` name made from a build key).
    pub async fn stop_named(&self, unit: &str) -> Result<(), BuilderError> {
        Ok(self.bus.stop(unit).await?)
    }

    pub async fn state_of(&self, unit: &str) -> Result<UnitState, BuilderError> {
        Ok(self.bus.state(unit).await?)
    }
}

/// The sandbox of a build unit. The unit runs as root (sbuild needs it for schroot, nspawn for
/// the machine), but the build itself does not: these properties bound what root in the unit
/// could reach. Writable: the build directory, the slot's apt cache, schroot's and sbuild's
/// session directories. Everything else of the host is read-only or absent (home directories,
/// the daemon's own key, database and spool). The network: none at all when nothing is to be
/// installed; else only the repository, the mirrors and the name servers (IPAddressAllow, where
/// the host has cgroup v2 firewalling).
pub fn sandbox(unit: &Unit) -> Vec<(&'static str, Prop)> {
    let mut writable = vec![unit.dir.display().to_string()];
    writable.extend(unit.writable.iter().map(|p| p.display().to_string()));
    let state_dir = unit.state.as_ref().map(|p| p.display().to_string());
    let mut p: Vec<(&'static str, Prop)> = vec![
        ("ProtectSystem", Prop::Str("strict".into())),
        ("ProtectHome", Prop::Str("yes".into())),
        ("PrivateTmp", Prop::Bool(true)),
        ("NoNewPrivileges", Prop::Bool(true)),
        ("ProtectKernelModules", Prop::Bool(true)),
        ("ProtectKernelLogs", Prop::Bool(true)),
        ("ProtectClock", Prop::Bool(true)),
        ("ProtectHostname", Prop::Bool(true)),
        ("RestrictRealtime", Prop::Bool(true)),
        ("UMask", Prop::U32(0o022)),
        ("LimitNOFILE", Prop::U64(65536)),
        (
            "RestrictAddressFamilies",
            Prop::Families(vec!["AF_UNIX".into(), "AF_INET".into(), "AF_INET6".into(), "AF_NETLINK".into()]),
        ),
    ];
    let native = unit.arch == crate::instance::host_arch();
    match unit.backend {
        Backend::Sbuild => {
            writable.extend(["/var/lib/schroot", "/run/schroot", "/run/lock/schroot"].iter().map(|s| format!("-{s}")));
            p.push(("ProtectKernelTunables", Prop::Bool(true)));
            p.push(("ProtectControlGroups", Prop::Bool(true)));
            p.push(("ProtectProc", Prop::Str("invisible".into())));
            p.push(("PrivateDevices", Prop::Bool(true)));
            p.push(("PrivateIPC", Prop::Bool(true)));
            // No user or other namespaces for the build (a large kernel attack surface).
            p.push(("RestrictNamespaces", Prop::U64(NAMESPACES_NONE)));
            p.push((
                "SystemCallFilter",
                Prop::SyscallFilter(vec!["@system-service".into(), "chroot".into(), "@mount".into()]),
            ));
            if native {
                // 32-bit builds switch personality and use the 32-bit system calls.
                p.push(("LockPersonality", Prop::Bool(true)));
                p.push(("SystemCallArchitectures", Prop::Strs(vec!["native".into()])));
            }
            p.push((
                "CapabilityBoundingSet",
                Prop::U64(caps(&[
                    "CAP_SYS_ADMIN",
                    "CAP_SYS_CHROOT",
                    "CAP_SETUID",
                    "CAP_SETGID",
                    "CAP_CHOWN",
                    "CAP_DAC_OVERRIDE",
                    "CAP_FOWNER",
                    "CAP_FSETID",
                    "CAP_KILL",
                    "CAP_SETFCAP",
                ])),
            ));
        }
        Backend::Nspawn => {
            // systemd-nspawn sets up the machine's mounts, cgroup and user namespace itself;
            // it locks the machine's tree and propagates mounts under /run/systemd/nspawn.
            writable.push(NSPAWN_RUN.into());
        }
    }
    match &unit.network {
        Network::None => p.push(("PrivateNetwork", Prop::Bool(true))),
        Network::Hosts(hosts) => {
            p.push(("IPAddressDeny", Prop::Ips(IpPrefix::any().to_vec())));
            p.push(("IPAddressAllow", Prop::Ips(allowed_addresses(hosts))));
        }
    }
    p.push(("ReadWritePaths", Prop::Strs(writable)));
    let mut hidden: Vec<String> = Vec::new();
    if unit.backend == Backend::Sbuild {
        // The build's dependencies' maintainer scripts run as root in the unit (sbuild's
        // session): the bus and systemd's private socket would let them start a unit outside
        // the sandbox. systemd-nspawn needs the bus (machined); its payload is in a user namespace.
        hidden.extend(["-/run/dbus", "-/run/systemd/private", "-/var/run/dbus"].map(String::from));
    }
    if let Some(state) = state_dir {
        match unit.state.as_ref().is_some_and(|s| unit.dir.starts_with(s)) {
            // A helper's build directories are outside the daemon's state: none of it is the
            // build's business.
            false => hidden.push(format!("-{state}")),
            // The daemon's key, database, spool, logs and one-time password are nothing a build
            // needs.
            true => hidden.extend(
                [
                    "gnupg",
                    "buildbay.redb",
                    "spool",
                    "incoming",
                    "etc",
                    "var/events",
                    "var/results",
                    "var/logs",
                    "admin-password",
                ]
                .iter()
                .map(|s| format!("-{state}/{s}")),
            ),
        }
    }
    if !hidden.is_empty() {
        p.push(("InaccessiblePaths", Prop::Strs(hidden)));
    }
    p
}

/// What a build may reach when it needs the network: loopback, the name servers, and the
/// addresses the hosts resolve to now.
fn allowed_addresses(hosts: &[String]) -> Vec<IpPrefix> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
    let mut out = vec![
        IpPrefix { addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), len: 8 },
        IpPrefix::host(Ipv6Addr::LOCALHOST.into()),
    ];
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for l in resolv.lines() {
        if let Some(a) = l.strip_prefix("nameserver").and_then(|a| a.trim().parse::<IpAddr>().ok()) {
            out.push(IpPrefix::host(a));
        }
    }
    for h in hosts {
        match (h.as_str(), 0).to_socket_addrs() {
            Ok(addrs) => out.extend(addrs.map(|a| IpPrefix::host(a.ip()))),
            Err(e) => tracing::warn!(host = %h, "cannot resolve a host the build may reach: {e}"),
        }
    }
    out.sort_by_key(|p| (p.addr, p.len));
    out.dedup();
    out
}

/// Where systemd-nspawn keeps its locks and mount propagation (made before a unit starts:
/// `ProtectSystem=strict` leaves /run read-only).
const NSPAWN_RUN: &str = "/run/systemd/nspawn";

/// `RestrictNamespaces=yes`: the mask of namespace flags that stay allowed (none).
const NAMESPACES_NONE: u64 = 0;

/// A capability set as the bit mask `CapabilityBoundingSet` takes.
fn caps(names: &[&str]) -> u64 {
    const ALL: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
    ];
    names.iter().filter_map(|n| ALL.iter().position(|a| a == n)).fold(0, |m, i| m | (1u64 << i))
}

/// The transient service of a build unit.
pub fn service(unit: &Unit) -> TransientService {
    let l = &unit.limits;
    TransientService {
        name: unit.name.clone(),
        description: unit.description.clone(),
        exec_start: unit.relay.clone(),
        exec_stop_post: vec![
            unit.exe.display().to_string(),
            "builder-exec".into(),
            "--stop-post".into(),
            unit.result.display().to_string(),
        ],
        working_directory: unit.dir.display().to_string(),
        user: None,
        environment: unit.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        memory_max: l.memory_max,
        cpu_weight: l.cpu_weight,
        tasks_max: l.tasks_max,
        runtime_max_sec: Some(l.runtime_max_sec),
        log_extra_fields: unit.log_fields.clone(),
        extra: sandbox(unit),
    }
}

#[async_trait::async_trait]
impl Runner for SystemdRunner {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn is_systemd(&self) -> bool {
        true
    }

    async fn launch(&self, l: Launch<'_>) -> Result<Launched, BuilderError> {
        let (request, mut tar) = super::read_queued(&l)?;
        let stage =
            Stage { bkey: l.bkey, slot: l.slot, request: &request, certs: l.certs, group: None, phase: l.phase };
        self.stage_and_start(stage, &mut tar).await
    }

    async fn ended(&self, job: &Job) -> Result<bool, BuilderError> {
        self.unit_ended(job, true).await
    }

    async fn stop(&self, job: &Job) -> Result<(), BuilderError> {
        self.stop_unit(job).await
    }

    async fn cancel(&self, job: &Job, by: &str) -> Result<(), BuilderError> {
        // Renamed into place: never written through what a build may have planted there.
        let marker = job.dir.join(crate::builder::result::CANCELED);
        crate::store::write_file_synced(&marker, by.as_bytes()).map_err(crate::builder::io_err(&marker))?;
        self.stop_unit(job).await
    }

    async fn unit_gone(&self, unit: &str) -> Result<bool, BuilderError> {
        Ok(self.state_of(unit).await? == UnitState::Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_masks() {
        assert_eq!(caps(&["CAP_CHOWN"]), 1);
        assert_eq!(caps(&["CAP_SYS_ADMIN", "CAP_SETFCAP"]), (1 << 21) | (1 << 31));
    }

    fn hidden(backend: Backend, dir: &str) -> Vec<String> {
        let unit = Unit {
            name: "buildbay-build-x.service".into(),
            description: String::new(),
            relay: vec![],
            result: std::path::PathBuf::from(dir).join("result"),
            dir: dir.into(),
            env: vec![],
            limits: crate::builder::Limits::default(),
            exe: "/usr/bin/buildbay".into(),
            log_fields: vec![],
            backend,
            arch: "amd64".into(),
            network: crate::builder::backend::Network::None,
            writable: vec![],
            state: Some("/var/lib/buildbay".into()),
        };
        sandbox(&unit)
            .into_iter()
            .find_map(|(k, v)| match (k, v) {
                ("InaccessiblePaths", Prop::Strs(v)) => Some(v),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_build_sees_neither_the_bus_nor_the_daemons_state() {
        let helper = hidden(Backend::Sbuild, "/var/lib/buildbay-builds/x");
        for p in ["-/run/dbus", "-/run/systemd/private", "-/var/lib/buildbay"] {
            assert!(helper.iter().any(|h| h == p), "{p} not hidden: {helper:?}");
        }
        let inside = hidden(Backend::Sbuild, "/var/lib/buildbay/var/builds/x");
        assert!(!inside.iter().any(|h| h == "-/var/lib/buildbay"), "its own directory hidden: {inside:?}");
        for p in ["-/var/lib/buildbay/gnupg", "-/var/lib/buildbay/buildbay.redb", "-/var/lib/buildbay/admin-password"] {
            assert!(inside.iter().any(|h| h == p), "{p} not hidden: {inside:?}");
        }
        // systemd-nspawn registers the machine over the bus.
        assert!(!hidden(Backend::Nspawn, "/var/lib/buildbay-builds/x").iter().any(|h| h.contains("dbus")));
    }
}
