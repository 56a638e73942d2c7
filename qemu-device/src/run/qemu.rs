//! How QEMU is started: the system's (or `--qemu PATH`), or the Debian 13 root's that
//! scripts/setup installed, run with chroot inside a private mount namespace (`unshare --mount`)
//! where the work directory is bind-mounted at /run/tiommu, with /proc and /dev: nothing stays
//! mounted when QEMU ends.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the work directory appears inside the root.
pub const IN_ROOT: &str = "/run/tiommu";

/// The exit status of the wrapper when the root's mounts could not be made (no QEMU ran).
pub const MOUNT_FAILED: i32 = 125;

#[derive(Clone, Debug)]
pub enum QemuCmd {
    /// A QEMU on the host, paths as they are.
    System { binary: PathBuf, work: PathBuf },
    /// The set-up's QEMU inside its Debian 13 root.
    Root { root: PathBuf, work: PathBuf },
}

/// The shell the namespace runs: mounts, then each "HOST NAME" pair bind-mounted over the
/// placeholder NAME in the work directory (files outside it: the kernel, an initramfs or root fs
/// of the user's own), then QEMU.
const ROOT_SCRIPT: &str = concat!(
    r#"root="$1"; work="$2"; shift 2; [ -x "$root/usr/bin/qemu-system-x86_64" ] || exit 125; "#,
    r#"mkdir -p "$root/run/tiommu" && mount --bind "$work" "$root/run/tiommu" && mount -t proc proc "$root/proc" && "#,
    r#"mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" || exit 125; "#,
    r#"while [ "$1" != -- ]; do mount --bind "$1" "$root/run/tiommu/$2" || exit 125; shift 2; done; shift; "#,
    r#"exec chroot "$root" "$@""#
);

impl QemuCmd {
    /// The directory QEMU sees the work directory as.
    pub fn dir_in_qemu(&self) -> String {
        match self {
            QemuCmd::System { work, .. } => work.display().to_string(),
            QemuCmd::Root { .. } => IN_ROOT.to_string(),
        }
    }

    pub fn binary_on_host(&self) -> PathBuf {
        match self {
            QemuCmd::System { binary, .. } => binary.clone(),
            QemuCmd::Root { root, .. } => root.join("usr/bin/qemu-system-x86_64"),
        }
    }

    /// The whole command line, as words: `binds` are (host file, name in the work directory)
    /// for files QEMU must read from outside it (with a system QEMU their paths are used as
    /// they are, so the caller names them with [`Self::path_of`]).
    pub fn argv(&self, args: &[String], binds: &[(PathBuf, String)]) -> Vec<String> {
        match self {
            QemuCmd::System { binary, .. } => std::iter::once(binary.display().to_string()).chain(args.iter().cloned()).collect(),
            QemuCmd::Root { root, work } => {
                // unshare's parent blocks SIGTERM while it waits; --kill-child turns its end into
                // a SIGTERM for QEMU, so a QEMU that has to be stopped is.
                let mut v: Vec<String> =
                    ["unshare", "--mount", "--fork", "--kill-child=SIGTERM", "sh", "-c", ROOT_SCRIPT, "sh"].map(String::from).to_vec();
                v.push(root.display().to_string());
                v.push(work.display().to_string());
                for (host, name) in binds {
                    v.push(host.display().to_string());
                    v.push(name.clone());
                }
                v.push("--".into());
                v.push("qemu-system-x86_64".into());
                v.extend(args.iter().cloned());
                v
            }
        }
    }

    pub fn command(&self, args: &[String], binds: &[(PathBuf, String)]) -> Command {
        let argv = self.argv(args, binds);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// How QEMU names a host file: as it is with a system QEMU, else the bind-mount
    /// placeholder `name` in the work directory (the caller adds `(host, name)` to the binds
    /// and makes the placeholder).
    pub fn path_of(&self, host: &Path, name: &str) -> String {
        match self {
            QemuCmd::System { .. } => host.display().to_string(),
            QemuCmd::Root { .. } => format!("{IN_ROOT}/{name}"),
        }
    }

    pub fn needs_binds(&self) -> bool {
        matches!(self, QemuCmd::Root { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_command_binds_then_chroots() {
        let q = QemuCmd::Root { root: "/r".into(), work: "/tmp/w".into() };
        let argv = q.argv(&["-m".into(), "512M".into()], &[("/boot/bzImage".into(), "vmlinuz".into())]);
        assert_eq!(&argv[..6], ["unshare", "--mount", "--fork", "--kill-child=SIGTERM", "sh", "-c"]);
        assert_eq!(&argv[7..], ["sh", "/r", "/tmp/w", "/boot/bzImage", "vmlinuz", "--", "qemu-system-x86_64", "-m", "512M"]);
        assert_eq!(q.dir_in_qemu(), "/run/tiommu");
        assert_eq!(q.path_of(Path::new("/boot/bzImage"), "vmlinuz"), "/run/tiommu/vmlinuz");
        let s = QemuCmd::System { binary: "/usr/bin/qemu-system-x86_64".into(), work: "/tmp/w".into() };
        assert_eq!(s.argv(&["-m".into()], &[]), ["/usr/bin/qemu-system-x86_64", "-m"]);
        assert_eq!(s.path_of(Path::new("/boot/bzImage"), "vmlinuz"), "/boot/bzImage");
    }

    #[test]
    fn the_root_script_stops_on_a_missing_root() {
        // sh, with `unshare` and `chroot` out of the picture: a root whose mounts fail exits 125
        // before anything runs.
        let out = Command::new("sh")
            .arg("-c")
            .arg(ROOT_SCRIPT.replace("mount ", "false ").replace("exec chroot", "echo ran"))
            .args(["sh", "/nonexistent-root", "/tmp", "--", "qemu"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(MOUNT_FAILED));
        assert!(out.stdout.is_empty());
    }
}
