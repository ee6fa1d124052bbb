//! Volumes at their mount paths: the plan the agent writes for each
//! container, and the code `gatewright-pod-exec` runs inside the container's
//! private mount namespace to carry it out before it execs the binary.
//!
//! Nothing here changes the host's filesystem: a mount point that does not
//! exist is made on a tmpfs laid over its nearest existing ancestor (inside
//! the private namespace only), with the ancestor's original entries bound
//! back onto the tmpfs so the process still sees them.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// One bind mount: a host file or folder shown at `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindMount {
    /// The host path (a volume folder, or a path inside it for subPath).
    pub source: PathBuf,
    /// The container's mount path.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What a container's mount namespace holds, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MountPlan {
    /// The hostname set in a UTS namespace of the container's own.
    pub hostname: Option<String>,
    /// Bind mounts, applied in this order.
    pub mounts: Vec<BindMount>,
}

/// A volume mount of the container, resolved against its volume's folder.
#[derive(Debug, Clone)]
pub struct VolumeMountSpec<'a> {
    /// The volume's host folder (or hostPath).
    pub volume_dir: &'a Path,
    /// `mountPath`.
    pub mount_path: &'a str,
    /// `subPath`, empty for none.
    pub sub_path: &'a str,
    /// `readOnly`.
    pub read_only: bool,
}

/// Builds the plan: volume mounts sorted so that a parent is mounted before
/// what is mounted inside it, then per-pod files over fixed paths
/// (`/etc/resolv.conf`, `/etc/hosts`) last, so that they stay on top even if
/// a volume mount under /etc made the agent lay a tmpfs over /etc.
pub fn build_plan(
    hostname: Option<String>,
    volumes: &[VolumeMountSpec<'_>],
    etc_files: &[(PathBuf, PathBuf)],
) -> Result<MountPlan> {
    let mut mounts = Vec::new();
    for v in volumes {
        let target = Path::new(v.mount_path);
        if !target.is_absolute() || target.components().any(|c| c == Component::ParentDir) {
            bail!(
                "mountPath {:?} is not an absolute path without '..'",
                v.mount_path
            );
        }
        let source = if v.sub_path.is_empty() {
            v.volume_dir.to_path_buf()
        } else {
            let sub = Path::new(v.sub_path);
            if sub.components().any(|c| !matches!(c, Component::Normal(_))) {
                bail!("subPath {:?} must be relative without '..'", v.sub_path);
            }
            v.volume_dir.join(sub)
        };
        mounts.push(BindMount {
            source,
            target: normalise(target),
            read_only: v.read_only,
        });
    }
    // Stable: equal depths keep the pod spec's order.
    mounts.sort_by_key(|m| m.target.components().count());
    for (source, target) in etc_files {
        mounts.push(BindMount {
            source: source.clone(),
            target: target.clone(),
            read_only: false,
        });
    }
    Ok(MountPlan { hostname, mounts })
}

/// `p` without trailing slashes or `.` components.
fn normalise(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The nearest ancestor of `target` (or `target` itself) that exists.
pub fn nearest_existing(target: &Path) -> PathBuf {
    let mut p = target;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return PathBuf::from("/"),
        }
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} has a NUL", p.display()))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let src = source.map(cstr).transpose()?;
    let tgt = cstr(target)?;
    let fs = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    let rc = unsafe {
        libc::mount(
            ptr(&src),
            tgt.as_ptr(),
            ptr(&fs),
            flags,
            ptr(&data).cast::<libc::c_void>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "mount {} on {} ({})",
                source.map_or_else(|| "-".to_string(), |s| s.display().to_string()),
                target.display(),
                fstype.unwrap_or("bind")
            )
        });
    }
    Ok(())
}

/// Carries out `plan` in the calling process: a new mount namespace (a
/// slave of the current one, so nothing propagates back to the host), the
/// hostname in a new UTS namespace, then every bind mount. Must run in a
/// single-threaded process (the helper, before exec).
pub fn apply(plan: &MountPlan) -> Result<()> {
    // SAFETY: unshare(2) with flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS)");
    }
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
    )
    .context("making / a recursive slave")?;
    if let Some(name) = plan.hostname.as_deref().filter(|n| !n.is_empty()) {
        // SAFETY: unshare(2) with flags only; sethostname with a valid buffer.
        unsafe {
            if libc::unshare(libc::CLONE_NEWUTS) != 0 {
                return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWUTS)");
            }
            let name = &name.as_bytes()[..name.len().min(63)];
            if libc::sethostname(name.as_ptr().cast(), name.len()) != 0 {
                return Err(std::io::Error::last_os_error()).context("sethostname");
            }
        }
    }
    let mut shadowed = BTreeSet::new();
    for m in &plan.mounts {
        let is_dir = std::fs::metadata(&m.source)
            .with_context(|| format!("volume source {}", m.source.display()))?
            .is_dir();
        let target = ensure_target(&m.target, is_dir, &mut shadowed)
            .with_context(|| format!("making mount point {}", m.target.display()))?;
        mount(
            Some(&m.source),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        if m.read_only {
            mount(
                None,
                &target,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            )
            .with_context(|| format!("making {} read-only", target.display()))?;
        }
    }
    Ok(())
}

/// Returns a path where `target` exists with the right kind, creating it on
/// a tmpfs laid over its nearest existing ancestor if it is missing.
fn ensure_target(target: &Path, dir: bool, shadowed: &mut BTreeSet<PathBuf>) -> Result<PathBuf> {
    if let Ok(meta) = std::fs::metadata(target) {
        if meta.is_dir() != dir {
            bail!(
                "{} exists but is {} a folder",
                target.display(),
                if dir { "not" } else { "" }
            );
        }
        return Ok(target.to_path_buf());
    }
    let ancestor = nearest_existing(target);
    let real = std::fs::canonicalize(&ancestor)
        .with_context(|| format!("resolving {}", ancestor.display()))?;
    if !shadowed.contains(&real) {
        shadow(&real)?;
        shadowed.insert(real.clone());
    }
    let rest = target.strip_prefix(&ancestor).unwrap_or(target);
    let path = real.join(rest);
    if dir {
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    } else {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    // Folders we created are on our tmpfs: later mounts may create there
    // directly, without another tmpfs.
    let mut p = if dir {
        Some(path.as_path())
    } else {
        path.parent()
    };
    while let Some(d) = p.filter(|d| d.starts_with(&real) && *d != real) {
        shadowed.insert(d.to_path_buf());
        p = d.parent();
    }
    Ok(path)
}

/// Lays a tmpfs over `dir` and binds each of its original entries back
/// (symlinks are copied), so the folder looks the same but new entries go
/// to the tmpfs, never to the host.
fn shadow(dir: &Path) -> Result<()> {
    if dir == Path::new("/") {
        return shadow_root();
    }
    // The original stays reachable through this descriptor once covered.
    let original =
        std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let via = PathBuf::from(format!("/proc/self/fd/{}", original.as_raw_fd()));
    let entries = list(&via).with_context(|| format!("listing {}", dir.display()))?;
    mount(
        Some(Path::new("tmpfs")),
        dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )?;
    re_expose(&via, dir, entries);
    Ok(())
}

/// The same for `/`: a mount over `/` is not seen by path lookups until the
/// process changes root, so the tmpfs is mounted on a folder first, entered,
/// moved onto `/`, filled through paths relative to it, and made the root.
fn shadow_root() -> Result<()> {
    let cwd = std::env::current_dir().context("reading the working folder")?;
    let original = std::fs::File::open("/").context("opening /")?;
    let via = PathBuf::from(format!("/proc/self/fd/{}", original.as_raw_fd()));
    let entries = list(&via).context("listing /")?;
    // Briefly covered while the tmpfs is set up; never /proc, needed below.
    let stage = ["/tmp", "/mnt", "/srv", "/opt"]
        .iter()
        .map(Path::new)
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
        .context("no folder to prepare a new / on")?;
    mount(
        Some(Path::new("tmpfs")),
        stage,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )?;
    std::env::set_current_dir(stage).context("entering the new /")?;
    mount(Some(stage), Path::new("/"), None, libc::MS_MOVE, None)?;
    // Relative paths now name the new tmpfs; absolute ones the old root.
    re_expose(&via, Path::new("."), entries);
    let dot = cstr(Path::new("."))?;
    // SAFETY: chroot(2) with a NUL-terminated path.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("changing root to the new /");
    }
    std::env::set_current_dir(&cwd).with_context(|| format!("returning to {}", cwd.display()))?;
    Ok(())
}

fn list(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    Ok(std::fs::read_dir(dir)?.filter_map(|e| e.ok()).collect())
}

/// Puts each original entry (reached through `via`) back under `dir`:
/// folders and files as recursive bind mounts, symlinks as copies.
fn re_expose(via: &Path, dir: &Path, entries: Vec<std::fs::DirEntry>) {
    for entry in entries {
        let name = entry.file_name();
        let src = via.join(&name);
        let dst = dir.join(&name);
        let result = (|| -> Result<()> {
            let kind = entry.file_type().context("file type")?;
            if kind.is_symlink() {
                let to = std::fs::read_link(&src).context("reading link")?;
                std::os::unix::fs::symlink(to, &dst).context("copying link")?;
                return Ok(());
            }
            if kind.is_dir() {
                std::fs::create_dir(&dst).context("creating folder")?;
            } else {
                std::fs::File::create(&dst).context("creating file")?;
            }
            mount(Some(&src), &dst, None, libc::MS_BIND | libc::MS_REC, None)
        })();
        if let Err(e) = result {
            // One entry the process will miss is better than no container.
            eprintln!("gatewright-pod-exec: re-exposing {}: {e:#}", dst.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_sorts_parents_first_and_etc_files_last() {
        let v1 = PathBuf::from("/s/v/tmp");
        let v2 = PathBuf::from("/s/v/cfg");
        let plan = build_plan(
            Some("p".into()),
            &[
                VolumeMountSpec {
                    volume_dir: &v2,
                    mount_path: "/tmp/deep/cfg/",
                    sub_path: "",
                    read_only: true,
                },
                VolumeMountSpec {
                    volume_dir: &v1,
                    mount_path: "/tmp",
                    sub_path: "",
                    read_only: false,
                },
                VolumeMountSpec {
                    volume_dir: &v2,
                    mount_path: "/etc/app.conf",
                    sub_path: "app.conf",
                    read_only: true,
                },
            ],
            &[(PathBuf::from("/s/etc/hosts"), PathBuf::from("/etc/hosts"))],
        )
        .unwrap();
        let targets: Vec<_> = plan.mounts.iter().map(|m| m.target.clone()).collect();
        assert_eq!(
            targets,
            vec![
                PathBuf::from("/tmp"),
                PathBuf::from("/etc/app.conf"),
                PathBuf::from("/tmp/deep/cfg"),
                PathBuf::from("/etc/hosts"),
            ]
        );
        assert_eq!(plan.mounts[1].source, PathBuf::from("/s/v/cfg/app.conf"));
        assert!(plan.mounts[2].read_only);
        assert!(!plan.mounts[3].read_only);
    }

    #[test]
    fn plan_rejects_bad_paths() {
        let v = PathBuf::from("/s/v");
        let bad = |mount_path: &'static str, sub_path: &'static str| {
            build_plan(
                None,
                &[VolumeMountSpec {
                    volume_dir: &v,
                    mount_path,
                    sub_path,
                    read_only: false,
                }],
                &[],
            )
            .is_err()
        };
        assert!(bad("relative", ""));
        assert!(bad("/a/../b", ""));
        assert!(bad("/a", "../x"));
        assert!(bad("/a", "/abs"));
        assert!(!bad("/a", "x/y"));
    }

    #[test]
    fn nearest_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a/b/c");
        assert_eq!(nearest_existing(&t), dir.path());
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        assert_eq!(nearest_existing(&t), dir.path().join("a"));
    }

    #[test]
    fn plan_round_trips_as_json() {
        let plan = MountPlan {
            hostname: Some("h".into()),
            mounts: vec![BindMount {
                source: "/a".into(),
                target: "/b".into(),
                read_only: true,
            }],
        };
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<MountPlan>(&text).unwrap(), plan);
    }
}
