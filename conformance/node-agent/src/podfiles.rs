//! Files and values a pod gets from the agent: Secret/ConfigMap/projected
//! volume contents written so that updates are atomic, `/etc/resolv.conf`,
//! `/etc/hosts`, the API server's service environment variables and when a
//! service-account token needs renewing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The symlink that names the folder holding a volume's current files.
pub const DATA_LINK: &str = "..data";

/// Writes `files` into volume folder `dir` the way readers of a kubelet
/// volume expect, so that a change appears at once: the files go to a new
/// hidden folder `..<timestamp>`, the `..data` symlink is replaced by a
/// rename to point at it, and each top-level entry is a symlink through
/// `..data`. Returns false (and writes nothing) if the content is unchanged.
pub fn atomic_write(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<bool> {
    for (rel, _) in files {
        if rel
            .components()
            .next()
            .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with(".."))
        {
            bail!("volume file name {} may not start with '..'", rel.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join(DATA_LINK);
    let old = std::fs::read_link(&link).ok();
    if old.is_some() && current_files(&link)? == sorted(files) {
        return Ok(false);
    }
    let stamp = jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let new = dir.join(&stamp);
    for (rel, bytes) in files {
        let path = new.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::create_dir_all(&new).with_context(|| format!("creating {}", new.display()))?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)
        .with_context(|| format!("linking {}", tmp.display()))?;
    std::fs::rename(&tmp, &link).with_context(|| format!("replacing {}", link.display()))?;
    // Top-level names: add the new ones, drop the ones that went away.
    let top: std::collections::BTreeSet<_> = files
        .iter()
        .filter_map(|(rel, _)| rel.components().next())
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    for name in &top {
        let entry = dir.join(name);
        if std::fs::symlink_metadata(&entry).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &entry)
                .with_context(|| format!("linking {}", entry.display()))?;
        }
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("..") {
            if name != DATA_LINK && Path::new(&name) != Path::new(&stamp) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        } else if !top.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(true)
}

fn sorted(files: &[(PathBuf, Vec<u8>)]) -> BTreeMap<PathBuf, Vec<u8>> {
    files.iter().cloned().collect()
}

/// Every regular file under `root` (following the `..data` link), by
/// relative path.
fn current_files(root: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(entry.path())
                    .with_context(|| format!("reading {}", entry.path().display()))?;
                out.insert(path, bytes);
            }
        }
    }
    Ok(out)
}

/// The pod's `/etc/resolv.conf` for `dnsPolicy: ClusterFirst`.
pub fn resolv_conf(nameserver: &str, namespace: &str, cluster_domain: &str) -> String {
    format!(
        "nameserver {nameserver}\nsearch {namespace}.svc.{cluster_domain} svc.{cluster_domain} {cluster_domain}\noptions ndots:5\n"
    )
}

/// The pod's `/etc/hosts`: localhost and the pod's own name.
pub fn etc_hosts(pod_ip: &str, hostname: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file (gatewright-node-agent).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         {pod_ip}\t{hostname}\n"
    )
}

/// A Service or port name as an environment variable name part, the way
/// kubelet spells it: upper case, dashes as underscores.
fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

/// The environment variables a Service named `name` with `cluster_ip` and
/// `ports` (name, port, protocol) gives a pod, as docker links did:
/// `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORTNAME>]`, `<NAME>_PORT*`.
pub fn service_env(
    name: &str,
    cluster_ip: &str,
    ports: &[(String, i32, String)],
) -> Vec<(String, String)> {
    let prefix = env_name(name);
    let mut env = vec![(format!("{prefix}_SERVICE_HOST"), cluster_ip.to_string())];
    let Some((_, first_port, first_proto)) = ports.first() else {
        return env;
    };
    env.push((format!("{prefix}_SERVICE_PORT"), first_port.to_string()));
    for (pname, port, _) in ports {
        if !pname.is_empty() {
            let pname = env_name(pname);
            env.push((format!("{prefix}_SERVICE_PORT_{pname}"), port.to_string()));
        }
    }
    env.push((
        format!("{prefix}_PORT"),
        format!(
            "{}://{cluster_ip}:{first_port}",
            first_proto.to_ascii_lowercase()
        ),
    ));
    for (_, port, proto) in ports {
        let upper = proto.to_ascii_uppercase();
        let lower = proto.to_ascii_lowercase();
        let base = format!("{prefix}_PORT_{port}_{upper}");
        env.push((base.clone(), format!("{lower}://{cluster_ip}:{port}")));
        env.push((format!("{base}_PROTO"), lower));
        env.push((format!("{base}_PORT"), port.to_string()));
        env.push((format!("{base}_ADDR"), cluster_ip.to_string()));
    }
    env
}

/// Whether a token valid for `lifetime`, `age` old, is due for renewal:
/// past 80 % of its life, or within 10 s of expiry for very short ones.
pub fn token_needs_refresh(age: Duration, lifetime: Duration) -> bool {
    age >= lifetime.mul_f64(0.8) || age + Duration::from_secs(10) >= lifetime
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str, b: &str) -> (PathBuf, Vec<u8>) {
        (PathBuf::from(p), b.as_bytes().to_vec())
    }

    #[test]
    fn atomic_write_swaps_data_link() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert!(atomic_write(dir, &[file("a", "1"), file("sub/b", "2")]).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert!(
            std::fs::symlink_metadata(dir.join("a"))
                .unwrap()
                .is_symlink()
        );
        let first = std::fs::read_link(dir.join(DATA_LINK)).unwrap();
        // Same content: nothing written.
        assert!(!atomic_write(dir, &[file("sub/b", "2"), file("a", "1")]).unwrap());
        assert_eq!(std::fs::read_link(dir.join(DATA_LINK)).unwrap(), first);
        // New content: new folder, old one and vanished names gone.
        std::thread::sleep(Duration::from_millis(2));
        assert!(atomic_write(dir, &[file("a", "3"), file("c", "4")]).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert_eq!(std::fs::read_to_string(dir.join("c")).unwrap(), "4");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err());
        assert_ne!(std::fs::read_link(dir.join(DATA_LINK)).unwrap(), first);
        assert!(!dir.join(&first).exists());
        let names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(atomic_write(dir, &[file("..evil", "x")]).is_err());
    }

    #[test]
    fn atomic_write_of_nothing() {
        let d = tempfile::tempdir().unwrap();
        assert!(atomic_write(d.path(), &[]).unwrap());
        assert!(!atomic_write(d.path(), &[]).unwrap());
    }

    #[test]
    fn dns_files() {
        assert_eq!(
            resolv_conf("10.244.0.1", "gw", "cluster.local"),
            "nameserver 10.244.0.1\nsearch gw.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        assert!(etc_hosts("10.244.0.5", "p-1").contains("10.244.0.5\tp-1\n"));
    }

    #[test]
    fn kubernetes_service_env() {
        let env = service_env(
            "kubernetes",
            "10.96.0.1",
            &[("https".into(), 443, "TCP".into())],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.96.0.1"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_PROTO"), Some("tcp"));
        let bare = service_env("my-svc", "10.96.3.4", &[]);
        assert_eq!(
            bare,
            vec![("MY_SVC_SERVICE_HOST".into(), "10.96.3.4".into())]
        );
    }

    #[test]
    fn token_refresh_timing() {
        let hour = Duration::from_secs(3600);
        assert!(!token_needs_refresh(Duration::from_secs(60), hour));
        assert!(!token_needs_refresh(Duration::from_secs(2879), hour));
        assert!(token_needs_refresh(Duration::from_secs(2880), hour));
        assert!(token_needs_refresh(
            Duration::from_secs(5),
            Duration::from_secs(12)
        ));
    }
}
