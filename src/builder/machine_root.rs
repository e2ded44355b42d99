//! The root directory of an nspawn build machine (`buildbay builder-exec --nspawn-root`): in a
//! mount namespace of its own, an id-mapped read-only view of the chroot image (its uid 0 shows
//! as the slot's first uid) under an overlay whose writable layer is a tmpfs owned by that uid.
//! systemd-nspawn then runs the machine in the slot's user namespace on it, without copying,
//! chowning or writing the image. (systemd 252's `--private-users-ownership=map` cannot id-map an
//! overlay, and its chown fallback copies the whole image into memory for every build.)
//!
//! Everything is undone by the kernel when the namespace's last process exits.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const OPEN_TREE_CLONE: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("a path holds a NUL byte"))
}

fn check(r: i64, what: &str) -> std::io::Result<i64> {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

/// A user namespace that maps 0…65535 to `base`…, held by a short-lived process.
fn userns(base: u32) -> std::io::Result<OwnedFd> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("60").stdin(std::process::Stdio::null());
    // SAFETY: unshare(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let result = (|| {
        let map = format!("0 {base} 65536\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(f))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Bind `image` read-only at `target`, its owners shifted into the user namespace `ns`.
fn idmapped_bind(image: &Path, target: &Path, ns: &OwnedFd) -> std::io::Result<()> {
    let src = cstr(image)?;
    // SAFETY: plain syscalls with valid, NUL-terminated paths and a properly sized struct.
    let fd = check(
        unsafe {
            nix::libc::syscall(
                nix::libc::SYS_open_tree,
                nix::libc::AT_FDCWD,
                src.as_ptr(),
                OPEN_TREE_CLONE | nix::libc::O_CLOEXEC as u32 | nix::libc::AT_RECURSIVE as u32,
            )
        },
        "open_tree of the image",
    )?;
    // SAFETY: the descriptor was just returned by open_tree and is owned here.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    let empty = CString::default();
    check(
        // SAFETY: see above.
        unsafe {
            nix::libc::syscall(
                nix::libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                (nix::libc::AT_EMPTY_PATH | nix::libc::AT_RECURSIVE) as u32,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        },
        "id-mapping the image (mount_setattr; needs Linux 5.12 and a file system that supports it)",
    )?;
    let dst = cstr(target)?;
    check(
        // SAFETY: see above.
        unsafe {
            nix::libc::syscall(
                nix::libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                nix::libc::AT_FDCWD,
                dst.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        },
        "move_mount of the image",
    )?;
    Ok(())
}

/// Set up the machine root and run systemd-nspawn on it: `nspawn` is its command line, to which
/// the root and the user namespace are added. Returns nspawn's exit code.
pub fn run(image: &Path, uid_base: u32, nspawn: &[String]) -> std::io::Result<i32> {
    use nix::mount::{MsFlags, mount};
    use std::os::unix::fs::DirBuilderExt;
    let (program, args) = nspawn.split_first().ok_or_else(|| std::io::Error::other("no nspawn command given"))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(std::io::Error::from)?;
    // Outside the build directory (the machine sees that one), in the unit's private /tmp.
    let work = std::env::temp_dir().join(format!("buildbay-machine-{uid_base}-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&work)?;
    let work = work.as_path();
    // A tmpfs of its own: what the machine writes (the overlay's upper layer) lives and dies here.
    mount(Some("tmpfs"), work, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0700"))
        .map_err(|e| std::io::Error::other(format!("tmpfs on {}: {e}", work.display())))?;
    for d in ["lower", "upper", "work", "root"] {
        std::fs::create_dir(work.join(d))?;
    }
    let owner = Some(nix::unistd::Uid::from_raw(uid_base));
    let group = Some(nix::unistd::Gid::from_raw(uid_base));
    for d in ["upper", "work"] {
        nix::unistd::chown(&work.join(d), owner, group).map_err(std::io::Error::from)?;
    }
    let ns = userns(uid_base)?;
    idmapped_bind(image, &work.join("lower"), &ns)?;
    drop(ns);
    // Relative paths: the build directory's path may hold ':' (an epoch), which overlayfs
    // options cannot take.
    std::env::set_current_dir(work)?;
    mount(
        Some("overlay"),
        "root",
        Some("overlay"),
        MsFlags::empty(),
        Some("lowerdir=lower,upperdir=upper,workdir=work"),
    )
    .map_err(|e| std::io::Error::other(format!("the overlay on the image: {e}")))?;
    let mut cmd = std::process::Command::new(program);
    cmd.arg(format!("--directory={}", work.join("root").display()))
        .arg(format!("--private-users={uid_base}:65536"))
        .arg("--private-users-ownership=off")
        .args(args);
    let status = cmd.status().map_err(|e| std::io::Error::new(e.kind(), format!("{program}: {e}")));
    std::env::set_current_dir("/")?;
    let _ = nix::mount::umount2(work, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(work);
    Ok(super::exec::exit_code(status?))
}
