//! The file provider's reading side: YAML files and directories of them,
//! split into documents that remember where they came from.
//!
//! Bad input never stops a load. A file that does not parse keeps the
//! documents it had at its last good load; an object that the translator
//! cannot read, or that its CRD refuses (schema and CEL rules, checked by
//! `gatewright_validate` as the API server would on create), keeps its last
//! good version. Every such case is reported as a [`Problem`] naming the
//! file and line.

use crate::infra::kubernetes::{ProxyParameters, ProxyParametersSpec};
use gatewright_translator::{Input, InputObject, ObjectKey};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a document starts: file and 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line of the document's first line (or of the error).
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The identity of a Kubernetes object: API group, kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectId {
    /// API group ("" for the core group).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Kinds that live outside namespaces.
const CLUSTER_SCOPED: &[&str] = &["GatewayClass", "Namespace"];

impl ObjectId {
    /// The identity of a document, if it has kind and name. Namespaced kinds
    /// without a namespace get `default`, as kubectl would.
    pub fn of(doc: &Value) -> Option<Self> {
        let api_version = doc.get("apiVersion")?.as_str()?;
        let kind = doc.get("kind")?.as_str()?.to_owned();
        let metadata = doc.get("metadata")?;
        let name = metadata.get("name")?.as_str()?.to_owned();
        let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
            String::new()
        } else {
            match metadata.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() => ns.to_owned(),
                _ => "default".to_owned(),
            }
        };
        let group = api_version
            .rsplit_once('/')
            .map_or("", |(g, _)| g)
            .to_owned();
        Some(Self {
            group,
            kind,
            namespace,
            name,
        })
    }
}

/// Something wrong with the input, and where.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// `file:line`.
    pub location: String,
    /// The object concerned, when the document names one.
    pub object: Option<ObjectId>,
    /// What is wrong, and what was done about it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(object) => write!(f, "{}: {object}: {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

/// One YAML document of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Where it starts.
    pub location: Location,
    /// The document as JSON.
    pub value: Value,
}

/// Everything read, ready to translate.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The objects, one per identity.
    pub input: Input,
    /// What was wrong, in file order.
    pub problems: Vec<Problem>,
    /// The identities that made it into `input`, with where they came from.
    pub objects: BTreeMap<ObjectId, Location>,
    /// The content of Gatewright's ProxyParameters objects, which only
    /// infrastructure reads (the translator's input lists their keys).
    pub proxy_parameters: crate::infra::kubernetes::ParametersStore,
    /// Counts the provider's changes of input: two snapshots of one
    /// provider with the same revision hold the same objects and
    /// problems, so the pipeline may reuse the translation. None when the
    /// provider does not keep count.
    pub revision: Option<u64>,
}

/// One document as last read: its identity, and the outcome of checking
/// and decoding it, worked out once per content of its file.
#[derive(Debug)]
struct Checked {
    location: Location,
    value: Value,
    id: Option<ObjectId>,
    /// The decoded object, or why it is refused (its CRD, its decoding).
    decoded: Result<InputObject, String>,
}

/// What the last read of one file left.
#[derive(Debug, Default)]
struct FileEntry {
    /// The text of the last successful read.
    text: String,
    /// The documents of the last successful read (none if there was none).
    docs: Vec<Arc<Checked>>,
    /// Why the last read failed, if it did: `docs` are then older.
    error: Option<Problem>,
}

/// Reads YAML from files and directories, remembering the last good content
/// of each file and object across loads.
///
/// Each file is read, parsed, checked and decoded once per content: a load
/// re-reads only what [`FileSource::mark_changed`] named (everything on
/// the first load, and on every [`FileSource::load`]), so one changed file
/// costs one file's work plus assembling the input.
#[derive(Debug, Default)]
pub struct FileSource {
    paths: Vec<PathBuf>,
    files: HashMap<PathBuf, FileEntry>,
    last_good_objects: HashMap<ObjectId, Arc<Checked>>,
    /// Files to read again at the next [`FileSource::load_changed`], as
    /// absolute paths; None means every file.
    changed: Option<HashSet<PathBuf>>,
    /// Objects are not checked against their CRDs (`translate
    /// --skip-schema-validation`).
    skip_schema_validation: bool,
    /// Counts loads whose input differed from the one before.
    revision: u64,
    /// What listing the paths reported at the last load.
    listing_problems: Vec<Problem>,
}

impl FileSource {
    /// A source over these files and directories (directories are read
    /// recursively, `*.yaml` and `*.yml` only).
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            ..Self::default()
        }
    }

    /// Whether to skip checking objects against their CRDs' schemas and
    /// CEL rules (checked by default).
    #[must_use]
    pub fn skip_schema_validation(mut self, skip: bool) -> Self {
        self.skip_schema_validation = skip;
        self
    }

    /// Notes that these paths (files or directories, as a file watcher
    /// reports them) may have changed since the last load.
    pub fn mark_changed(&mut self, paths: impl IntoIterator<Item = PathBuf>) {
        if let Some(changed) = &mut self.changed {
            changed.extend(paths.into_iter().map(|p| absolute(&p)));
        }
    }

    /// Notes that anything may have changed (the watcher lost track).
    pub fn mark_all_changed(&mut self) {
        self.changed = None;
    }

    /// Reads everything now.
    pub fn load(&mut self, controller_name: &str) -> Snapshot {
        self.changed = None;
        self.load_changed(controller_name)
    }

    /// Reads again the files marked changed since the last load (all of
    /// them the first time), and assembles every object.
    pub fn load_changed(&mut self, controller_name: &str) -> Snapshot {
        let mut problems = Vec::new();
        let mut files = Vec::new();
        for path in &self.paths {
            collect_files(path, &mut files, &mut problems);
        }
        files.sort();
        files.dedup();

        let changed = self.changed.replace(HashSet::new());
        let mut previous = std::mem::take(&mut self.files);
        let mut differs = false;
        for file in files {
            let mut entry = previous.remove(&file);
            differs |= entry.is_none();
            let reread = match (&changed, &entry) {
                (_, None) | (None, _) => true,
                (Some(changed), Some(_)) if changed.is_empty() => false,
                // A directory moved in or out changes every file under it.
                (Some(changed), Some(_)) => {
                    absolute(&file).ancestors().any(|p| changed.contains(p))
                }
            };
            if reread {
                let old = entry.take().unwrap_or_default();
                let (text, error) = (old.text.clone(), old.error.clone());
                let new = self.read(&file, old);
                differs |= new.text != text || new.error != error;
                entry = Some(new);
            }
            if let Some(entry) = entry {
                self.files.insert(file, entry);
            }
        }
        // Files gone, or listing problems, change the input too.
        differs |= !previous.is_empty() || problems != self.listing_problems;
        self.listing_problems.clone_from(&problems);
        if differs {
            self.revision += 1;
        }
        let mut snapshot = self.assemble(controller_name, problems);
        snapshot.revision = Some(self.revision);
        snapshot
    }

    /// Reads `file` again; `old` is what its last read left.
    fn read(&self, file: &Path, old: FileEntry) -> FileEntry {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                return self.failed(
                    old,
                    Problem {
                        location: file.display().to_string(),
                        object: None,
                        message: format!("cannot read: {e}"),
                    },
                );
            }
        };
        if old.error.is_none() && !old.docs.is_empty() && old.text == text {
            return old;
        }
        match parse_documents(file, &text) {
            Ok(docs) => FileEntry {
                text,
                docs: docs.into_iter().map(|d| Arc::new(self.check(d))).collect(),
                error: None,
            },
            Err(problem) => self.failed(old, *problem),
        }
    }

    /// A failed read keeps the file's last good documents.
    fn failed(&self, old: FileEntry, mut problem: Problem) -> FileEntry {
        problem.message.push_str(if old.docs.is_empty() {
            "; file skipped"
        } else {
            "; keeping the file's last good content"
        });
        FileEntry {
            error: Some(problem),
            ..old
        }
    }

    /// Checks a document against its CRD and decodes it.
    fn check(&self, doc: Document) -> Checked {
        let id = ObjectId::of(&doc.value);
        let decoded = match &id {
            None => Err(String::new()),
            Some(id) => if self.skip_schema_validation {
                Ok(())
            } else {
                check_schema(&doc.value)
            }
            .and_then(|()| check_parameters(id, &doc.value))
            .and_then(|()| InputObject::decode(doc.value.clone()).map_err(|e| e.to_string())),
        };
        Checked {
            location: doc.location,
            value: doc.value,
            id,
            decoded,
        }
    }

    /// Builds the snapshot from every file's documents, in file order.
    fn assemble(&mut self, controller_name: &str, mut problems: Vec<Problem>) -> Snapshot {
        let mut paths: Vec<&PathBuf> = self.files.keys().collect();
        paths.sort();
        let mut input = Input::new();
        input.controller_name = controller_name.to_owned();
        let mut objects: BTreeMap<ObjectId, Location> = BTreeMap::new();
        let mut good_objects = HashMap::new();
        for path in paths {
            let entry = &self.files[path];
            if let Some(problem) = &entry.error {
                problems.push(problem.clone());
            }
            for doc in &entry.docs {
                // Spelled out only for a problem: most documents have none.
                let location = || doc.location.to_string();
                let Some(id) = &doc.id else {
                    problems.push(Problem {
                        location: location(),
                        object: None,
                        message: "document has no apiVersion, kind or metadata.name; skipped"
                            .into(),
                    });
                    continue;
                };
                if let Some(first) = objects.get(id) {
                    problems.push(Problem {
                        location: location(),
                        object: Some(id.clone()),
                        message: format!("duplicate object, already defined at {first}; skipped"),
                    });
                    continue;
                }
                match &doc.decoded {
                    Ok(object) => {
                        input.insert(object.clone());
                        good_objects.insert(id.clone(), Arc::clone(doc));
                        objects.insert(id.clone(), doc.location.clone());
                    }
                    Err(e) => {
                        let kept = self.last_good_objects.get(id);
                        let suffix = if kept.is_some() {
                            "; keeping its last good version"
                        } else {
                            "; skipped"
                        };
                        problems.push(Problem {
                            location: location(),
                            object: Some(id.clone()),
                            message: format!("{e}{suffix}"),
                        });
                        // It was accepted before, so it is accepted again.
                        if let Some(kept) = kept
                            && let Ok(object) = &kept.decoded
                        {
                            input.insert(object.clone());
                            good_objects.insert(id.clone(), Arc::clone(kept));
                            objects.insert(id.clone(), doc.location.clone());
                        }
                    }
                }
            }
        }
        let proxy_parameters = good_objects
            .iter()
            .filter(|(id, _)| is_proxy_parameters(id))
            .filter_map(|(id, doc)| {
                let spec = parameters_spec(&doc.value).ok()?;
                Some((ObjectKey::new(&id.namespace, &id.name), spec))
            })
            .collect();
        self.last_good_objects = good_objects;
        Snapshot {
            input,
            problems,
            objects,
            proxy_parameters,
            revision: None,
        }
    }
}

/// `path` made absolute against the working directory, without touching
/// the file system, so watcher paths and listed paths compare equal.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// An object whose kind has a CRD in the built-in bundle must pass its
/// schema and CEL rules, as in a cluster, where the API server would have
/// refused it; other kinds (Service, Secret, …) are not checked here.
fn check_schema(value: &Value) -> Result<(), String> {
    gatewright_validate::validate(value)
        .map(drop)
        .map_err(|refusal| format!("refused by its CRD: {refusal}"))
}

fn is_proxy_parameters(id: &ObjectId) -> bool {
    id.group == crate::infra::kubernetes::params::GROUP
        && id.kind == crate::infra::kubernetes::params::KIND
}

/// The spec of a ProxyParameters document.
fn parameters_spec(value: &Value) -> Result<ProxyParametersSpec, String> {
    serde_json::from_value::<ProxyParameters>(value.clone())
        .map(|p| p.spec)
        .map_err(|e| format!("cannot decode ProxyParameters: {e}"))
}

/// A ProxyParameters document must decode: one that does not is refused
/// like any undecodable object, so a Gateway naming it is not served with
/// its parameters half read.
fn check_parameters(id: &ObjectId, value: &Value) -> Result<(), String> {
    if is_proxy_parameters(id) {
        parameters_spec(value).map(drop)
    } else {
        Ok(())
    }
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            problems.push(Problem {
                location: path.display().to_string(),
                object: None,
                message: format!("cannot read: {e}"),
            });
            return;
        }
    };
    if metadata.is_file() {
        files.push(path.to_owned());
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(Problem {
                location: path.display().to_string(),
                object: None,
                message: format!("cannot list directory: {e}"),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Editors' swap and backup files, and hidden files, are not config.
        if name.starts_with('.') {
            continue;
        }
        // The entry's own type needs no stat; only symlinks are followed.
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_symlink() => p.is_dir(),
            Ok(t) => t.is_dir(),
            Err(_) => p.is_dir(),
        };
        if is_dir {
            collect_files(&p, files, problems);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            files.push(p);
        }
    }
}

/// Splits `text` at `---` lines and parses each document. Any YAML error
/// fails the whole file, so a half-edited file never replaces its last good
/// content.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<Document>, Box<Problem>> {
    let mut docs = Vec::new();
    for (start_line, chunk) in split_documents(text) {
        let yaml: serde_yaml::Value = serde_yaml::from_str(&chunk).map_err(|e| {
            let line = e
                .location()
                .map_or(start_line, |l| start_line + l.line() - 1);
            Problem {
                location: Location {
                    file: file.to_owned(),
                    line,
                }
                .to_string(),
                object: None,
                message: format!("invalid YAML: {e}"),
            }
        })?;
        if yaml.is_null() {
            continue;
        }
        let location = Location {
            file: file.to_owned(),
            line: start_line,
        };
        let value = serde_json::to_value(&yaml).map_err(|e| Problem {
            location: location.to_string(),
            object: None,
            message: format!("cannot convert YAML to JSON: {e}"),
        })?;
        if !value.is_object() {
            return Err(Box::new(Problem {
                location: location.to_string(),
                object: None,
                message: "document is not a mapping".into(),
            }));
        }
        docs.push(Document { location, value });
    }
    Ok(docs)
}

/// Documents of a YAML stream with the 1-based line each starts on. Lines
/// before a document's first content line are kept (as blank lines) so
/// parser error lines stay right.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line == "...";
        if is_marker {
            out.push((start, std::mem::take(&mut current)));
            start = i + 2;
            // `--- ` may carry content after the marker.
            if let Some(rest) = line.strip_prefix("--- ") {
                current.push_str(rest);
                current.push('\n');
                start = i + 1;
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    out.push((start, current));
    out.into_iter()
        .map(|(start, chunk)| {
            // Report a document at its first non-blank, non-comment line.
            let skip = chunk
                .lines()
                .take_while(|l| {
                    let t = l.trim();
                    t.is_empty() || t.starts_with('#')
                })
                .count();
            let kept: String = chunk.lines().skip(skip).fold(String::new(), |mut s, l| {
                s.push_str(l);
                s.push('\n');
                s
            });
            (start + skip, kept)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_their_start_line() {
        let text = "# header\n\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n\nkind: Namespace\napiVersion: v1\nmetadata: {name: b}\n";
        let docs = parse_documents(Path::new("f.yaml"), text).expect("parses");
        let lines: Vec<usize> = docs.iter().map(|d| d.location.line).collect();
        assert_eq!(lines, vec![3, 9]);
    }

    #[test]
    fn yaml_errors_name_the_file_and_line() {
        let text =
            "apiVersion: v1\nkind: Namespace\n---\napiVersion: v1\nkind: [unclosed\nmetadata: {}\n";
        let err = parse_documents(Path::new("bad.yaml"), text).expect_err("must fail");
        assert!(
            err.location.starts_with("bad.yaml:5") || err.location.starts_with("bad.yaml:6"),
            "location was {}",
            err.location
        );
    }

    #[test]
    fn duplicates_and_bad_objects_are_reported_and_last_good_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.yaml");
        let svc = |port: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  ports: [{{port: {port}}}]\n"
            )
        };
        std::fs::write(&file, format!("{}---\n{}", svc("80"), svc("81"))).expect("write");
        let mut source = FileSource::new(vec![dir.path().to_owned()]);
        let snap = source.load("c");
        assert_eq!(snap.input.services.len(), 1);
        assert_eq!(snap.problems.len(), 1, "{:?}", snap.problems);
        assert!(snap.problems[0].message.contains("duplicate"));
        assert_eq!(snap.problems[0].location, format!("{}:7", file.display()));

        // An invalid version of the object keeps the last good one.
        std::fs::write(&file, svc("\"eighty\"")).expect("write");
        let snap = source.load("c");
        assert_eq!(snap.input.services.len(), 1);
        let port = &snap.input.services[0].spec.as_ref().expect("spec").ports;
        assert_eq!(port.as_ref().expect("ports")[0].port, 80);
        assert!(snap.problems[0].message.contains("last good"));

        // A file that does not parse keeps its last good documents.
        std::fs::write(&file, "kind: [\n").expect("write");
        let snap = source.load("c");
        assert_eq!(snap.input.services.len(), 1);
        assert!(snap.problems[0].message.contains("invalid YAML"));
    }

    /// `load_changed` reads again only the files named since the last
    /// load (or a directory above them), and its revision moves only when
    /// the input did.
    #[test]
    fn only_files_marked_changed_are_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ns =
            |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, ns("a1")).expect("write");
        std::fs::write(&b, ns("b1")).expect("write");
        let mut source = FileSource::new(vec![dir.path().to_owned()]);
        let names = |snap: &Snapshot| -> Vec<String> {
            let mut n: Vec<String> = snap
                .input
                .namespaces
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            n.sort();
            n
        };
        let first = source.load_changed("c");
        assert_eq!(names(&first), ["a1", "b1"]);

        // Nothing marked: neither file is read, the revision stays.
        std::fs::write(&a, ns("a2")).expect("write");
        let same = source.load_changed("c");
        assert_eq!(names(&same), ["a1", "b1"]);
        assert_eq!(same.revision, first.revision);

        // Marked: read again, and the revision moves.
        source.mark_changed([a.clone()]);
        let next = source.load_changed("c");
        assert_eq!(names(&next), ["a2", "b1"]);
        assert_ne!(next.revision, first.revision);

        // Marked but unchanged: the revision stays.
        source.mark_changed([a.clone()]);
        assert_eq!(source.load_changed("c").revision, next.revision);

        // A directory marks every file under it; a new file is always read.
        std::fs::write(&b, ns("b2")).expect("write");
        std::fs::write(dir.path().join("c.yaml"), ns("c1")).expect("write");
        source.mark_changed([dir.path().to_owned()]);
        assert_eq!(names(&source.load_changed("c")), ["a2", "b2", "c1"]);

        // A file gone is gone without being marked.
        std::fs::remove_file(&a).expect("remove");
        let gone = source.load_changed("c");
        assert_eq!(names(&gone), ["b2", "c1"]);
        assert_ne!(gone.revision, next.revision);
    }

    /// An object its CRD refuses (schema or CEL rule) is reported with the
    /// rule's message and field path and keeps its last good version, as
    /// an object the translator cannot read does.
    #[test]
    fn objects_the_crds_refuse_keep_their_last_good_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("gw.yaml");
        let gateway = |listener: &str| {
            format!(
                "# a comment\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: n}}\nspec:\n  gatewayClassName: c\n  listeners:\n  - {listener}\n"
            )
        };
        std::fs::write(&file, gateway("{name: tcp, port: 9000, protocol: TCP}")).expect("write");
        let mut source = FileSource::new(vec![dir.path().to_owned()]);
        let snap = source.load("c");
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        assert_eq!(snap.input.gateways.len(), 1);

        // A CEL rule of the Gateway CRD.
        std::fs::write(
            &file,
            gateway("{name: tcp, port: 9001, protocol: TCP, hostname: a.example.com}"),
        )
        .expect("write");
        let snap = source.load("c");
        assert_eq!(snap.problems.len(), 1, "{:?}", snap.problems);
        assert_eq!(
            snap.problems[0].to_string(),
            format!(
                "{}:2: Gateway n/gw: refused by its CRD: spec.listeners: hostname must not be specified for protocols ['TCP', 'UDP']; keeping its last good version",
                file.display()
            )
        );
        assert_eq!(snap.input.gateways.len(), 1);
        assert_eq!(snap.input.gateways[0].spec.listeners[0].port, 9000);

        // A schema rule: port out of range; an unknown field.
        std::fs::write(
            &file,
            gateway("{name: tcp, port: 70000, protocol: TCP, colour: red}"),
        )
        .expect("write");
        let snap = source.load("c");
        assert_eq!(snap.problems.len(), 1, "{:?}", snap.problems);
        let message = &snap.problems[0].message;
        assert!(
            message.contains("spec.listeners[0].port: Invalid value: 70000: should be less than or equal to 65535")
                && message.contains("spec.listeners[0].colour: unknown field"),
            "{message}"
        );
        assert_eq!(snap.input.gateways[0].spec.listeners[0].port, 9000);

        // Without validation, the file's content is taken as it is.
        let mut unchecked =
            FileSource::new(vec![dir.path().to_owned()]).skip_schema_validation(true);
        let snap = unchecked.load("c");
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    }
}
