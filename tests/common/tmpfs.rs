//! A real full filesystem for tests: a tmpfs of a fixed size (tests/durability.rs,
//! tests/file_output.rs).

use std::path::Path;

/// A tmpfs of a fixed size, mounted on a fresh directory and unmounted on drop, so a disk
/// buffer can fill its filesystem for real. Needs root (or CAP_SYS_ADMIN).
pub struct Tmpfs {
    dir: tempfile::TempDir,
    /// Mounted through `sudo -n` (CI runners that are not root but may sudo).
    sudo: bool,
}

impl Tmpfs {
    /// `None` (test skipped, with a message) when mounting is not permitted here; with
    /// `CI` set, a failed mount fails the test instead ([`super::peer_missing`]), so CI
    /// never skips it silently.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = format!("size={size},mode=1777");
        let mut why = Vec::new();
        for sudo in [false, true] {
            let mut cmd = std::process::Command::new(if sudo { "sudo" } else { "mount" });
            if sudo {
                cmd.args(["-n", "mount"]);
            }
            let out = cmd
                .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
                .arg(dir.path())
                .output();
            match out {
                Ok(o) if o.status.success() => return Some(Tmpfs { dir, sudo }),
                Ok(o) => why.push(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                Err(e) => why.push(e.to_string()),
            }
        }
        super::peer_missing(&format!(
            "cannot mount a {size} tmpfs for the full-disk test ({}); it needs root, \
             CAP_SYS_ADMIN or passwordless sudo",
            why.join("; ")
        ));
        None
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = std::process::Command::new(if self.sudo { "sudo" } else { "umount" });
            if self.sudo {
                c.args(["-n", "umount"]);
            }
            if lazy {
                c.arg("-l");
            }
            c.arg(self.dir.path()).status().is_ok_and(|s| s.success())
        };
        if !umount(false) {
            // Still busy (a process that did not exit yet): detach it anyway.
            let _ = umount(true);
        }
    }
}
