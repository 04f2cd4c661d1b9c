//! The workspace's layering, checked (docs/architecture.md, "Layers"): the crates depend on each
//! other one way only, no two source files import each other, and no source file is over 800
//! lines unless its module doc says why it must be one.
//!
//! Reads `crates/*/src` and `crates/*/Cargo.toml` as text; no Burn, no device. The import check
//! resolves every top-level `use` of a file (`crate::`, `super::`, `self::` and child-module
//! paths, brace groups expanded) to the file that defines the named module or item, following
//! `pub use` re-exports; a file's own `pub use` of a child's item counts only where the file's
//! code names the item (a parent that merely re-exports its children does not depend on them).
//! Not counted: `#[cfg(doc)]` imports (doc links), `#[cfg(test)]` imports and imports inside
//! inline modules (tests reach across files on purpose), and paths written out in expressions.
//! A child module that uses its parent's items is a mutual pair like any other: the parent's
//! helpers go in a file of their own, or the parent's code that needs the child moves to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file longer than this needs a reason in its module doc (`issue 14`).
const MAX_LINES: usize = 800;

/// The words a long file's module doc must contain to say why it is one.
const LONG_FILE_REASON: &str = "one file on purpose";

/// Which of our crates each crate may depend on (`[dependencies]`): kernels and core at the
/// bottom, schedulers and models on them, long-video on schedulers (never on models: models call
/// core's hook traits, long-video implements them), the facade on everything.
const ALLOWED_DEPENDENCIES: &[(&str, &[&str])] = &[
    ("vdm-core", &[]),
    ("vdm-kernels", &["vdm-core"]),
    ("vdm-schedulers", &["vdm-core", "vdm-kernels"]),
    ("vdm-models", &["vdm-core", "vdm-kernels"]),
    (
        "vdm-longvideo",
        &["vdm-core", "vdm-kernels", "vdm-schedulers"],
    ),
    (
        "vdm",
        &[
            "vdm-core",
            "vdm-kernels",
            "vdm-schedulers",
            "vdm-models",
            "vdm-longvideo",
        ],
    ),
];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One source file: its crate, its module path and its text.
struct Source {
    krate: String,
    module: Vec<String>,
    path: String,
    text: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Every `crates/<name>/src/**/*.rs` of the workspace.
fn workspace_sources() -> Vec<Source> {
    let root = crates_dir();
    let mut sources = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .collect();
    names.sort();
    for dir in names {
        let krate = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
        let src = dir.join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for file in files {
            let rel = file.strip_prefix(&src).unwrap().with_extension("");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("lib" | "main" | "mod")
            ) {
                module.pop();
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let path = file.strip_prefix(&root).unwrap().display().to_string();
            sources.push(Source {
                krate: krate.clone(),
                module,
                path,
                text,
            });
        }
    }
    assert!(sources.len() > 100, "found only {} files", sources.len());
    sources
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e` (an `x as y` keeps `x`).
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap().replace(' ', "");
        return vec![path];
    };
    let prefix = tree[..open].replace(' ', "");
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut parts, mut depth, mut current) = (Vec::new(), 0, String::new());
    for ch in inner.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(ch);
        }
    }
    parts.push(current);
    parts
        .iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p.trim()))
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// A top-level import: whether it is a `pub use`, and its path segments.
struct Import {
    public: bool,
    path: Vec<String>,
}

/// The top-level `use` items of a file, except `#[cfg(doc)]` / `#[cfg(test)]` ones; and the
/// file's code without them and without comments.
fn imports(text: &str) -> (Vec<Import>, String) {
    let mut out = Vec::new();
    let mut rest = String::new();
    let mut lines = text.lines().peekable();
    let mut skip_next = false;
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let at_top = !line.starts_with([' ', '\t']);
        let is_use = at_top
            && ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .any(|p| line.starts_with(p));
        if !is_use {
            skip_next = at_top && matches!(trimmed, "#[cfg(doc)]" | "#[cfg(test)]");
            // Code only: a name in a comment or doc comment is no use of it.
            rest.push_str(line.split("//").next().unwrap());
            rest.push('\n');
            continue;
        }
        let mut item = line.to_string();
        while !item.contains(';') {
            match lines.next() {
                Some(next) => item.push_str(next),
                None => break,
            }
        }
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let public = line.starts_with("pub");
        let tree = &item[item.find("use ").unwrap() + 4..item.find(';').unwrap()];
        for path in expand(tree) {
            out.push(Import {
                public,
                path: path.split("::").map(str::to_string).collect(),
            });
        }
    }
    (out, rest)
}

/// Whether `name` occurs in `text` as a whole identifier.
fn names(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// The file-to-file import graph of a set of sources; keys and values index `sources`.
struct Graph<'a> {
    sources: &'a [Source],
    by_module: BTreeMap<(&'a str, Vec<String>), usize>,
    imports: Vec<Vec<Import>>,
    /// Each file's code without its imports and comments (see [`imports`]).
    code: Vec<String>,
}

impl<'a> Graph<'a> {
    fn new(sources: &'a [Source]) -> Self {
        let by_module = sources
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.krate.as_str(), s.module.clone()), i))
            .collect();
        let (imports, code) = sources.iter().map(|s| imports(&s.text)).unzip();
        Self {
            sources,
            by_module,
            imports,
            code,
        }
    }

    /// The absolute module path (in `krate`) of `path` written in module `module`; `None` for
    /// another crate's or std's items.
    fn absolute(&self, krate: &str, module: &[String], path: &[String]) -> Option<Vec<String>> {
        match path.first().map(String::as_str) {
            Some("crate") => Some(path[1..].to_vec()),
            Some("self") => Some([module, &path[1..]].concat()),
            Some("super") => {
                let ups = path.iter().take_while(|s| *s == "super").count();
                let base = &module[..module.len().checked_sub(ups)?];
                Some([base, &path[ups..]].concat())
            }
            Some(first) => {
                let child = [module, &[first.to_string()]].concat();
                self.by_module
                    .contains_key(&(krate, child))
                    .then(|| [module, path].concat())
            }
            None => None,
        }
    }

    /// The file defining the item at absolute `path` in `krate`, through re-exports.
    fn resolve(&self, krate: &str, path: &[String], depth: usize) -> usize {
        let (file, rest) = (0..=path.len())
            .rev()
            .find_map(|k| {
                let key = (krate, path[..k].to_vec());
                self.by_module.get(&key).map(|&f| (f, &path[k..]))
            })
            .expect("every crate has a lib.rs");
        let Some(name) = rest.first().filter(|n| *n != "*") else {
            return file;
        };
        if depth < 8 {
            let module = &self.sources[file].module;
            for import in self.imports[file].iter().filter(|i| i.public) {
                if import.path.last() == Some(name)
                    && let Some(target) = self.absolute(krate, module, &import.path)
                {
                    return self.resolve(krate, &[target, rest[1..].to_vec()].concat(), depth + 1);
                }
            }
        }
        file
    }

    /// Every (importer, imported) pair of distinct files.
    fn edges(&self) -> BTreeSet<(usize, usize)> {
        let mut edges = BTreeSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            for import in &self.imports[i] {
                let name = import.path.last().unwrap();
                if import.public && name != "*" && !names(&self.code[i], name) {
                    continue;
                }
                let Some(mut target) = self.absolute(&source.krate, &source.module, &import.path)
                else {
                    continue;
                };
                if target.last().is_some_and(|s| s == "*" || s == "self") {
                    target.pop();
                }
                let file = self.resolve(&source.krate, &target, 0);
                if file != i {
                    edges.insert((i, file));
                }
            }
        }
        edges
    }

    /// Every pair of files that import each other, as paths.
    fn mutual_pairs(&self) -> Vec<String> {
        let edges = self.edges();
        edges
            .iter()
            .filter(|(a, b)| a < b && edges.contains(&(*b, *a)))
            .map(|&(a, b)| format!("{} <-> {}", self.sources[a].path, self.sources[b].path))
            .collect()
    }
}

#[test]
fn no_two_files_import_each_other() {
    let sources = workspace_sources();
    let graph = Graph::new(&sources);
    let edges = graph.edges();
    assert!(edges.len() > 200, "only {} imports resolved", edges.len());
    let pairs = graph.mutual_pairs();
    assert!(
        pairs.is_empty(),
        "files that import each other:\n{}",
        pairs.join("\n")
    );
}

/// The checker finds mutual pairs (a sibling reached through its parent's re-export, the case
/// the workspace had; a parent whose code names its child's item while the child uses the
/// parent) and ignores doc-only imports and a parent that only re-exports a child or names its
/// item in a comment.
#[test]
fn the_import_check_finds_mutual_pairs() {
    let source = |module: &[&str], text: &str| Source {
        krate: "demo".into(),
        module: module.iter().map(|s| s.to_string()).collect(),
        path: format!("{}.rs", module.join("/")),
        text: text.into(),
    };
    let tree = |model: &str, config: &str| {
        [
            source(&[], "mod config;\nmod model;\n"),
            source(&["model"], model),
            source(
                &["model", "parts"],
                "use super::Helper;\nuse crate::config::Config;\npub struct Part;\n",
            ),
            source(&["config"], config),
        ]
    };
    let model = "//! The model and its [`Part`].\nmod parts;\npub use parts::Part;\n\
                 use super::config::Config;\npub struct Helper;\n";
    let model_naming_part = "mod parts;\npub use parts::Part;\nuse super::config::Config;\n\
                             pub struct Helper;\npub struct Model(Part);\n";
    let doc_only = "#[cfg(doc)]\nuse crate::model::Part;\npub struct Config;\n";
    let importing = "use crate::model::{\n    Part,\n};\npub struct Config;\n";
    let pairs = |files: &[Source]| Graph::new(files).mutual_pairs();
    assert!(pairs(&tree(model, doc_only)).is_empty());
    assert_eq!(
        pairs(&tree(model, importing)),
        ["model/parts.rs <-> config.rs"]
    );
    assert_eq!(
        pairs(&tree(model_naming_part, doc_only)),
        ["model.rs <-> model/parts.rs"]
    );
}

#[test]
fn long_files_say_why() {
    let long: Vec<String> = workspace_sources()
        .iter()
        .filter(|s| s.text.lines().count() > MAX_LINES)
        .filter(|s| {
            let doc: String = s
                .text
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .collect();
            !doc.contains(LONG_FILE_REASON)
        })
        .map(|s| format!("{} ({} lines)", s.path, s.text.lines().count()))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines without \"{LONG_FILE_REASON}\" and a reason in their \
         module doc:\n{}",
        long.join("\n")
    );
}

#[test]
fn crates_depend_one_way() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_DEPENDENCIES.iter().copied().collect();
    let mut seen = 0;
    for (name, allowed) in &allowed {
        let manifest = crates_dir().join(name).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let mut section = "";
        for line in text.lines() {
            if line.starts_with('[') {
                section = line.trim();
                continue;
            }
            let dep = line.split(['.', '=', ' ']).next().unwrap_or("");
            if section == "[dependencies]" && dep.starts_with("vdm") {
                assert!(
                    allowed.contains(&dep),
                    "{name} depends on {dep}; allowed: {allowed:?}"
                );
            }
        }
        seen += 1;
    }
    let on_disk = std::fs::read_dir(crates_dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("Cargo.toml").is_file())
        .count();
    assert_eq!(
        seen, on_disk,
        "a crate is missing from ALLOWED_DEPENDENCIES"
    );
}
