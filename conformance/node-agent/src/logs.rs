//! Container log files: one line per output line, `<RFC 3339 time> <stream>
//! <text>`; and the filtering the kubelet's log API offers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use jiff::Timestamp;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// The folder of one pod's logs: `<state>/logs/<namespace>_<pod>_<uid>`.
pub fn pod_log_dir(state_dir: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    state_dir
        .join("logs")
        .join(format!("{namespace}_{pod}_{uid}"))
}

/// The log file of a container of the newest pod named `namespace/pod`.
pub fn find_log_file(
    state_dir: &Path,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Option<PathBuf> {
    let prefix = format!("{namespace}_{pod}_");
    let entries = std::fs::read_dir(state_dir.join("logs")).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| {
            let file = e.path().join(format!("{container}.log"));
            let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok()?;
            Some((modified, file))
        })
        .max_by_key(|(m, _)| *m)
        .map(|(_, f)| f)
}

/// Copies `reader` line by line into `file`, stamping each line.
pub async fn pump<R: AsyncRead + Unpin>(
    reader: R,
    stream: &'static str,
    file: Arc<Mutex<tokio::fs::File>>,
) -> Result<()> {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .await
            .context("reading process output")?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&buf);
        let line = format_line(
            Timestamp::now(),
            stream,
            text.trim_end_matches(['\n', '\r']),
        );
        let mut f = file.lock().await;
        f.write_all(line.as_bytes())
            .await
            .context("writing log file")?;
        f.flush().await.context("flushing log file")?;
    }
}

/// One stored log line.
pub fn format_line(ts: Timestamp, stream: &str, text: &str) -> String {
    format!(
        "{} {stream} {text}\n",
        ts.strftime("%Y-%m-%dT%H:%M:%S%.9fZ")
    )
}

/// What a client asked of `/containerLogs`.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only lines at or after this time.
    pub since: Option<Timestamp>,
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Prefix each line with its time.
    pub timestamps: bool,
}

/// A parsed stored line: time and text (stream dropped).
fn parse_line(line: &str) -> Option<(Timestamp, &str)> {
    let (ts, rest) = line.split_once(' ')?;
    let ts: Timestamp = ts.parse().ok()?;
    let text = rest.split_once(' ').map(|(_, t)| t).unwrap_or("");
    Some((ts, text))
}

/// Renders one stored line for the client, or None if filtered out.
pub fn render_line(line: &str, q: &LogQuery) -> Option<String> {
    let (ts, text) = parse_line(line)?;
    if q.since.is_some_and(|s| ts < s) {
        return None;
    }
    Some(if q.timestamps {
        format!("{} {text}\n", ts.strftime("%Y-%m-%dT%H:%M:%S%.9fZ"))
    } else {
        format!("{text}\n")
    })
}

/// Renders the stored `content` (whole lines) per the query.
pub fn render(content: &str, q: &LogQuery) -> String {
    let lines: Vec<String> = content.lines().filter_map(|l| render_line(l, q)).collect();
    let skip = q.tail.map(|t| lines.len().saturating_sub(t)).unwrap_or(0);
    lines[skip..].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sample() -> String {
        [
            format_line(ts("2026-01-01T00:00:01Z"), "stdout", "one"),
            format_line(ts("2026-01-01T00:00:02Z"), "stderr", "two words"),
            format_line(ts("2026-01-01T00:00:03Z"), "stdout", ""),
        ]
        .concat()
    }

    #[test]
    fn plain_and_timestamped() {
        assert_eq!(
            render(&sample(), &LogQuery::default()),
            "one\ntwo words\n\n"
        );
        let q = LogQuery {
            timestamps: true,
            tail: Some(1),
            ..Default::default()
        };
        assert_eq!(render(&sample(), &q), "2026-01-01T00:00:03.000000000Z \n");
    }

    #[test]
    fn since_and_tail() {
        let q = LogQuery {
            since: Some(ts("2026-01-01T00:00:02Z")),
            ..Default::default()
        };
        assert_eq!(render(&sample(), &q), "two words\n\n");
        let q = LogQuery {
            tail: Some(2),
            ..Default::default()
        };
        assert_eq!(render(&sample(), &q), "two words\n\n");
        let q = LogQuery {
            tail: Some(0),
            ..Default::default()
        };
        assert_eq!(render(&sample(), &q), "");
        let q = LogQuery {
            tail: Some(10),
            since: Some(ts("2027-01-01T00:00:00Z")),
            ..Default::default()
        };
        assert_eq!(render(&sample(), &q), "");
    }

    #[test]
    fn finds_newest_pod_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = pod_log_dir(dir.path(), "ns", "p", "u1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("c.log"), "x").unwrap();
        assert_eq!(
            find_log_file(dir.path(), "ns", "p", "c"),
            Some(d.join("c.log"))
        );
        assert_eq!(find_log_file(dir.path(), "ns", "p", "other"), None);
        assert_eq!(find_log_file(dir.path(), "ns", "q", "c"), None);
    }
}
