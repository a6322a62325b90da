//! Find a model the way users name it: a local folder, a local `.gguf` file, or a Hugging Face
//! repo id such as `unsloth/DeepSeek-R1-Distill-Llama-8B`.
//!
//! Repo ids are looked up in the Hugging Face cache that `huggingface_hub` (Python) and
//! `hf-hub` (Rust) share, so a model downloaded by either tool is found without a download:
//!
//! ```text
//! <cache>/models--{org}--{name}/refs/main            the commit hash of `main`
//! <cache>/models--{org}--{name}/snapshots/<hash>/... the files (links into blobs/)
//! ```
//!
//! `<cache>` is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
//! else `~/.cache/huggingface/hub`. Files missing from the cache are downloaded into it with
//! `hf-hub` (blocking `ureq` client, rustls) unless `HF_HUB_OFFLINE` is `1`/`true`/`yes`/`on`;
//! `HF_TOKEN` (or the token file `$HF_HOME/token`) authenticates gated repos and `HF_ENDPOINT`
//! replaces `https://huggingface.co`. When files are still missing the error lists each one
//! and the folder that was searched.
//!
//! A model folder needs `config.json`, `tokenizer.json` and safetensors weights: either
//! `model.safetensors`, or `model.safetensors.index.json` plus every shard its `weight_map`
//! names. `tokenizer_config.json` and `generation_config.json` are used when present.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const SINGLE_WEIGHTS: &str = "model.safetensors";
const WEIGHT_INDEX: &str = "model.safetensors.index.json";

/// A model located on disk, ready to be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedModel {
    /// One GGUF file: weights, tokenizer and chat template all live in its metadata.
    Gguf(PathBuf),
    /// A folder laid out like a Hugging Face model repository (a local folder or a cache
    /// snapshot).
    Safetensors(ModelFiles),
}

/// The files of a Hugging Face style model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The folder (for a cached repo: `snapshots/<commit>`).
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `tokenizer_config.json`, when present (chat template, special tokens).
    pub tokenizer_config: Option<PathBuf>,
    /// `generation_config.json`, when present (EOS ids, sampling defaults).
    pub generation_config: Option<PathBuf>,
    /// `model.safetensors.index.json`, when the weights are sharded.
    pub weight_index: Option<PathBuf>,
    /// The safetensors files: `model.safetensors`, or every shard named by the index,
    /// sorted by name.
    pub weights: Vec<PathBuf>,
    /// The extra files the caller asked for, in the order asked.
    pub extra: Vec<PathBuf>,
}

/// Why a model could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The spec is neither an existing path nor an `org/name` repo id.
    #[error(
        "{spec:?} is not an existing file or folder, nor a Hugging Face repo id like \
         \"org/name\""
    )]
    NotFound {
        /// What the user gave.
        spec: String,
    },
    /// The path exists but is neither a folder nor a `.gguf` file.
    #[error("{path}: not a model folder or a .gguf file")]
    NotAModel {
        /// The path given.
        path: PathBuf,
    },
    /// Required files are missing, after a download attempt where one was allowed.
    #[error("{}", missing_message(.model, .dir, .missing, .reason))]
    Missing {
        /// The folder path or repo id the user gave.
        model: String,
        /// The folder that was searched (for a repo: its cache folder or snapshot).
        dir: PathBuf,
        /// Each missing file, relative to `dir`.
        missing: Vec<String>,
        /// Why they were not downloaded (offline, download failure) or were not looked for.
        reason: String,
    },
    /// A file exists but cannot be read or parsed.
    #[error("{path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

fn missing_message(model: &str, dir: &Path, missing: &[String], reason: &str) -> String {
    let mut text = format!("model {model:?} is incomplete: missing {} in {}", missing.join(", "), dir.display());
    if !reason.is_empty() {
        text.push_str(" (");
        text.push_str(reason);
        text.push(')');
    }
    text
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, HubError>;

/// Locates the model `spec` names, downloading missing files of a Hugging Face repo into the
/// cache when the network is allowed (see the module docs).
///
/// `spec` is a path to a model folder or a `.gguf` file, or a repo id `org/name`. `files`
/// are extra files the caller needs besides the standard set (for example
/// `special_tokens_map.json`); they must exist in the folder or repo and are returned in
/// [`ModelFiles::extra`]. A `.gguf` file is returned as is; `files` do not apply to it.
pub fn resolve_model(spec: &str, files: &[&str]) -> Result<ResolvedModel> {
    resolve_with(spec, files, &HubEnv::from_process())
}

/// Settings from the environment, read in one place so tests can pass their own.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HubEnv {
    /// The hub cache folder (holds `models--org--name`); `None` when no home folder is known.
    cache: Option<PathBuf>,
    /// `HF_HUB_OFFLINE` is set: never use the network.
    offline: bool,
    /// Access token for gated or private repos.
    token: Option<String>,
    /// Replacement for `https://huggingface.co`.
    endpoint: Option<String>,
}

impl HubEnv {
    fn from_process() -> Self {
        Self::from_vars(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
    }

    /// Builds the settings from a variable lookup (`var(name)` is `None` when unset).
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))
                .map(|cache| cache.join("huggingface"))
        });
        let cache = var("HF_HUB_CACHE").map(PathBuf::from).or_else(|| hf_home.as_ref().map(|h| h.join("hub")));
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let token = var("HF_TOKEN").or_else(|| {
            let file = hf_home?.join("token");
            let text = std::fs::read_to_string(file).ok()?;
            Some(text.trim().to_owned()).filter(|t| !t.is_empty())
        });
        HubEnv { cache, offline, token, endpoint: var("HF_ENDPOINT") }
    }
}

fn resolve_with(spec: &str, files: &[&str], env: &HubEnv) -> Result<ResolvedModel> {
    let path = Path::new(spec);
    if path.is_dir() {
        return match scan_folder(path, files)? {
            Scan::Complete(found) => Ok(ResolvedModel::Safetensors(found)),
            Scan::Missing(missing) => Err(HubError::Missing {
                model: spec.to_owned(),
                dir: path.to_path_buf(),
                missing,
                reason: String::new(),
            }),
        };
    }
    if path.is_file() {
        let is_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        return if is_gguf {
            Ok(ResolvedModel::Gguf(path.to_path_buf()))
        } else {
            Err(HubError::NotAModel { path: path.to_path_buf() })
        };
    }
    // A `.gguf` name that is not a file is a mistyped path, never a repo id.
    let gguf_path = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let Some(repo_folder) = repo_folder_name(spec).filter(|_| !gguf_path) else {
        return Err(HubError::NotFound { spec: spec.to_owned() });
    };
    let Some(cache) = &env.cache else {
        return Err(HubError::Missing {
            model: spec.to_owned(),
            dir: PathBuf::from(format!("<Hugging Face cache>/{repo_folder}")),
            missing: required_files(files),
            reason: "no cache folder: set HF_HUB_CACHE, HF_HOME or HOME".into(),
        });
    };
    let repo_dir = cache.join(&repo_folder);
    let cached = scan_cache(&repo_dir, files)?;
    let (dir, missing) = match cached {
        Ok(found) => return Ok(ResolvedModel::Safetensors(found)),
        Err(missing) => missing,
    };
    let reason = if env.offline {
        "HF_HUB_OFFLINE is set, so nothing was downloaded".to_owned()
    } else {
        match download(spec, cache, &repo_dir, files, env) {
            Ok(()) => match scan_cache(&repo_dir, files)? {
                Ok(found) => return Ok(ResolvedModel::Safetensors(found)),
                Err((dir, missing)) => {
                    return Err(HubError::Missing {
                        model: spec.to_owned(),
                        dir,
                        missing,
                        reason: "still missing after downloading".into(),
                    })
                }
            },
            Err(e) => format!("download failed: {e}"),
        }
    };
    Err(HubError::Missing { model: spec.to_owned(), dir, missing, reason })
}

/// `models--{org}--{name}` for a valid repo id `org/name`, else `None`.
fn repo_folder_name(spec: &str) -> Option<String> {
    let (org, name) = spec.split_once('/')?;
    let valid = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && !part.contains("--")
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(org) && valid(name)).then(|| format!("models--{org}--{name}"))
}

/// Outcome of checking one folder for the model files.
enum Scan {
    Complete(ModelFiles),
    /// The missing files, relative to the folder.
    Missing(Vec<String>),
}

/// Looks up the snapshot `refs/main` points to. `Ok(Err((dir, missing)))` says which files
/// are missing and where they were looked for.
fn scan_cache(repo_dir: &Path, files: &[&str]) -> Result<std::result::Result<ModelFiles, (PathBuf, Vec<String>)>> {
    let ref_file = repo_dir.join("refs").join("main");
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(text) => text.trim().to_owned(),
        Err(_) => {
            let mut missing = vec!["refs/main (the repo is not in the cache)".to_owned()];
            missing.extend(required_files(files));
            return Ok(Err((repo_dir.to_path_buf(), missing)));
        }
    };
    if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(HubError::BadFile { path: ref_file, message: format!("not a commit hash: {commit:?}") });
    }
    let snapshot = repo_dir.join("snapshots").join(&commit);
    Ok(match scan_folder(&snapshot, files)? {
        Scan::Complete(found) => Ok(found),
        Scan::Missing(missing) => Err((snapshot, missing)),
    })
}

/// How a missing set of weights is named in errors.
fn weights_label() -> String {
    format!("{SINGLE_WEIGHTS} (or {WEIGHT_INDEX} and its shards)")
}

/// Every file a model folder needs, as named in errors when none of them is there.
fn required_files(extra: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = [CONFIG, TOKENIZER].iter().chain(extra).map(|s| s.to_string()).collect();
    names.push(weights_label());
    names
}

/// Checks `dir` for the standard model files plus `extra`.
fn scan_folder(dir: &Path, extra: &[&str]) -> Result<Scan> {
    let mut missing = Vec::new();
    let mut require = |name: &str| {
        let path = dir.join(name);
        if !path.is_file() {
            missing.push(name.to_owned());
        }
        path
    };
    let config = require(CONFIG);
    let tokenizer = require(TOKENIZER);
    let extra: Vec<PathBuf> = extra.iter().map(|name| require(name)).collect();
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());

    let index = dir.join(WEIGHT_INDEX);
    let (weight_index, weights) = if index.is_file() {
        let mut weights = Vec::new();
        for shard in shard_names(&index)? {
            let path = dir.join(&shard);
            if !path.is_file() {
                missing.push(shard);
            }
            weights.push(path);
        }
        (Some(index), weights)
    } else if dir.join(SINGLE_WEIGHTS).is_file() {
        (None, vec![dir.join(SINGLE_WEIGHTS)])
    } else {
        missing.push(weights_label());
        (None, Vec::new())
    };

    if !missing.is_empty() {
        return Ok(Scan::Missing(missing));
    }
    Ok(Scan::Complete(ModelFiles {
        dir: dir.to_path_buf(),
        config,
        tokenizer,
        tokenizer_config: optional(TOKENIZER_CONFIG),
        generation_config: optional(GENERATION_CONFIG),
        weight_index,
        weights,
        extra,
    }))
}

/// The shard file names a safetensors index's `weight_map` refers to, sorted and unique.
/// Names must be plain relative paths inside the model folder.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let bad = |message: String| HubError::BadFile { path: index.to_path_buf(), message };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map =
        json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a file name")))?;
        let plain =
            !file.is_empty() && Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(bad(format!("weight_map[{tensor:?}] = {file:?} is not a file inside the model folder")));
        }
        shards.insert(file.to_owned());
    }
    if shards.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    Ok(shards.into_iter().collect())
}

/// A download error with the file it concerned.
struct DownloadError {
    file: String,
    message: String,
}

impl fmt::Display for DownloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// Downloads the model's files of the current `main` commit into the cache (`repo_dir` is the
/// repo's folder in it). Files already in that commit's snapshot are not downloaded again.
fn download(
    spec: &str,
    cache: &Path,
    repo_dir: &Path,
    extra: &[&str],
    env: &HubEnv,
) -> std::result::Result<(), DownloadError> {
    use hf_hub::api::sync::ApiBuilder;

    let fail = |file: &str, e: &dyn fmt::Display| DownloadError { file: file.to_owned(), message: e.to_string() };
    let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
        .with_token(env.token.clone())
        .with_progress(true);
    if let Some(endpoint) = &env.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| fail("(client)", &e))?;
    let repo = api.model(spec.to_owned());
    let info = repo.info().map_err(|e| fail("(repo listing)", &e))?;
    let upstream: BTreeSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let snapshot = repo_dir.join("snapshots").join(&info.sha);
    let fetch = |name: &str| -> std::result::Result<PathBuf, DownloadError> {
        let local = snapshot.join(name);
        if local.is_file() {
            return Ok(local);
        }
        repo.download(name).map_err(|e| fail(name, &e))
    };

    let mut wanted: Vec<String> = [CONFIG, TOKENIZER].iter().chain(extra).map(|s| s.to_string()).collect();
    for optional in [TOKENIZER_CONFIG, GENERATION_CONFIG] {
        if upstream.contains(optional) {
            wanted.push(optional.to_owned());
        }
    }
    if upstream.contains(WEIGHT_INDEX) {
        let index = fetch(WEIGHT_INDEX)?;
        let shards = shard_names(&index).map_err(|e| fail(WEIGHT_INDEX, &e))?;
        wanted.extend(shards);
    } else if upstream.contains(SINGLE_WEIGHTS) {
        wanted.push(SINGLE_WEIGHTS.to_owned());
    } else {
        return Err(DownloadError {
            file: SINGLE_WEIGHTS.to_owned(),
            message: format!(
                "the repo has no safetensors weights (for a GGUF repo, download the .gguf \
                 and pass its path); it holds: {}",
                upstream.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    for name in &wanted {
        fetch(name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Offline tests: each lays out its own cache folder in a tempdir and passes the settings
    //! explicitly (no environment variables are touched, so tests can run in parallel).

    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn offline(cache: &Path) -> HubEnv {
        HubEnv { cache: Some(cache.to_path_buf()), offline: true, token: None, endpoint: None }
    }

    /// Writes `files` into `cache/models--org--name/snapshots/COMMIT/` and points
    /// `refs/main` at it. Files are real files here; the real cache uses links into
    /// `blobs/`, which `is_file` follows.
    fn lay_out(cache: &Path, repo: &str, files: &[(&str, &str)]) -> PathBuf {
        let repo_dir = cache.join(repo_folder_name(repo).unwrap());
        let snapshot = repo_dir.join("snapshots").join(COMMIT);
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), format!("{COMMIT}\n")).unwrap();
        for (name, text) in files {
            std::fs::write(snapshot.join(name), text).unwrap();
        }
        snapshot
    }

    const INDEX: &str = r#"{"metadata": {"total_size": 4},
        "weight_map": {"a": "model-00001-of-00002.safetensors",
                       "b": "model-00002-of-00002.safetensors",
                       "c": "model-00001-of-00002.safetensors"}}"#;

    #[test]
    fn sharded_snapshot_resolves() {
        let cache = tempfile::tempdir().unwrap();
        let snapshot = lay_out(
            cache.path(),
            "unsloth/DeepSeek-R1-Distill-Llama-8B",
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                ("tokenizer_config.json", "{}"),
                ("model.safetensors.index.json", INDEX),
                ("model-00001-of-00002.safetensors", ""),
                ("model-00002-of-00002.safetensors", ""),
            ],
        );
        let got = resolve_with("unsloth/DeepSeek-R1-Distill-Llama-8B", &[], &offline(cache.path())).unwrap();
        let ResolvedModel::Safetensors(files) = got else { panic!("expected a safetensors model, got {got:?}") };
        assert_eq!(files.dir, snapshot);
        assert_eq!(files.config, snapshot.join("config.json"));
        assert_eq!(files.tokenizer, snapshot.join("tokenizer.json"));
        assert_eq!(files.tokenizer_config, Some(snapshot.join("tokenizer_config.json")));
        assert_eq!(files.generation_config, None);
        assert_eq!(files.weight_index, Some(snapshot.join("model.safetensors.index.json")));
        assert_eq!(
            files.weights,
            vec![snapshot.join("model-00001-of-00002.safetensors"), snapshot.join("model-00002-of-00002.safetensors"),]
        );
    }

    #[test]
    fn missing_shard_is_named() {
        let cache = tempfile::tempdir().unwrap();
        let snapshot = lay_out(
            cache.path(),
            "org/model",
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                ("model.safetensors.index.json", INDEX),
                ("model-00001-of-00002.safetensors", ""),
            ],
        );
        let err = resolve_with("org/model", &[], &offline(cache.path())).unwrap_err();
        let HubError::Missing { ref dir, ref missing, .. } = err else { panic!("expected Missing, got {err}") };
        assert_eq!(dir, &snapshot);
        assert_eq!(missing, &["model-00002-of-00002.safetensors"]);
        let text = err.to_string();
        assert!(text.contains("model-00002-of-00002.safetensors"), "{text}");
        assert!(text.contains(&snapshot.display().to_string()), "{text}");
        assert!(text.contains("HF_HUB_OFFLINE"), "{text}");
    }

    /// In the real cache, snapshot entries are links into `blobs/`; a link whose blob is gone
    /// (an interrupted download, a cleaned cache) counts as missing.
    #[cfg(unix)]
    #[test]
    fn dangling_blob_link_is_missing() {
        let cache = tempfile::tempdir().unwrap();
        let snapshot = lay_out(cache.path(), "org/linked", &[("config.json", "{}"), ("model.safetensors", "")]);
        std::os::unix::fs::symlink("../../blobs/0abc", snapshot.join("tokenizer.json")).unwrap();
        let err = resolve_with("org/linked", &[], &offline(cache.path())).unwrap_err();
        assert!(matches!(&err, HubError::Missing { missing, .. } if missing == &["tokenizer.json"]), "{err}");
        let blobs = cache.path().join("models--org--linked/blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join("0abc"), "{}").unwrap();
        assert!(resolve_with("org/linked", &[], &offline(cache.path())).is_ok());
    }

    #[test]
    fn single_file_snapshot_with_extras() {
        let cache = tempfile::tempdir().unwrap();
        let snapshot = lay_out(
            cache.path(),
            "org/small",
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                ("generation_config.json", "{}"),
                ("model.safetensors", ""),
                ("special_tokens_map.json", "{}"),
            ],
        );
        let env = offline(cache.path());
        let got = resolve_with("org/small", &["special_tokens_map.json"], &env).unwrap();
        let ResolvedModel::Safetensors(files) = got else { panic!("expected a safetensors model") };
        assert_eq!(files.weights, vec![snapshot.join("model.safetensors")]);
        assert_eq!(files.weight_index, None);
        assert_eq!(files.generation_config, Some(snapshot.join("generation_config.json")));
        assert_eq!(files.extra, vec![snapshot.join("special_tokens_map.json")]);

        let err = resolve_with("org/small", &["adapter_config.json"], &env).unwrap_err();
        assert!(matches!(&err, HubError::Missing { missing, .. } if missing == &["adapter_config.json"]), "{err}");
    }

    #[test]
    fn missing_weights_and_config_are_listed() {
        let cache = tempfile::tempdir().unwrap();
        lay_out(cache.path(), "org/bare", &[("tokenizer.json", "{}")]);
        let err = resolve_with("org/bare", &[], &offline(cache.path())).unwrap_err();
        let HubError::Missing { missing, .. } = &err else { panic!("expected Missing, got {err}") };
        assert_eq!(missing[0], "config.json");
        assert!(missing[1].starts_with("model.safetensors (or model.safetensors.index.json"));
        assert_eq!(missing.len(), 2);
    }

    #[test]
    fn repo_absent_from_cache() {
        let cache = tempfile::tempdir().unwrap();
        let err = resolve_with("org/absent", &[], &offline(cache.path())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("refs/main"), "{text}");
        assert!(text.contains("models--org--absent"), "{text}");
    }

    #[test]
    fn bad_index_and_ref_are_errors() {
        let cache = tempfile::tempdir().unwrap();
        lay_out(
            cache.path(),
            "org/evil",
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                ("model.safetensors.index.json", r#"{"weight_map": {"a": "../../escape.safetensors"}}"#),
            ],
        );
        let err = resolve_with("org/evil", &[], &offline(cache.path())).unwrap_err();
        assert!(
            matches!(&err, HubError::BadFile { path, .. } if path.ends_with("model.safetensors.index.json")),
            "{err}"
        );

        lay_out(cache.path(), "org/broken", &[]);
        let ref_file = cache.path().join("models--org--broken/refs/main");
        std::fs::write(&ref_file, "not a/hash").unwrap();
        let err = resolve_with("org/broken", &[], &offline(cache.path())).unwrap_err();
        assert!(matches!(&err, HubError::BadFile { path, .. } if path == &ref_file), "{err}");
    }

    #[test]
    fn local_paths() {
        let dir = tempfile::tempdir().unwrap();
        let env = offline(&dir.path().join("no-cache"));
        let gguf = dir.path().join("m.Q8_0.GGUF");
        std::fs::write(&gguf, "").unwrap();
        let spec = gguf.to_str().unwrap();
        assert_eq!(resolve_with(spec, &[], &env).unwrap(), ResolvedModel::Gguf(gguf.clone()));

        let other = dir.path().join("notes.txt");
        std::fs::write(&other, "").unwrap();
        let err = resolve_with(other.to_str().unwrap(), &[], &env).unwrap_err();
        assert!(matches!(err, HubError::NotAModel { .. }), "{err}");

        let folder = dir.path().join("model");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("config.json"), "{}").unwrap();
        std::fs::write(folder.join("model.safetensors"), "").unwrap();
        let err = resolve_with(folder.to_str().unwrap(), &[], &env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("missing tokenizer.json in") && text.contains(folder.to_str().unwrap()), "{text}");
        std::fs::write(folder.join("tokenizer.json"), "{}").unwrap();
        let ResolvedModel::Safetensors(files) = resolve_with(folder.to_str().unwrap(), &[], &env).unwrap() else {
            panic!("expected a folder model")
        };
        assert_eq!(files.weights, vec![folder.join("model.safetensors")]);
    }

    #[test]
    fn unknown_specs() {
        let dir = tempfile::tempdir().unwrap();
        let env = offline(dir.path());
        for spec in ["", "model.gguf", "models/missing.gguf", "a/b/c", "/nonexistent/x", "../up/model", "org/"] {
            let err = resolve_with(spec, &[], &env).unwrap_err();
            assert!(matches!(err, HubError::NotFound { .. }), "{spec:?}: {err}");
        }
    }

    #[test]
    fn download_failure_lists_missing_files() {
        // Port 1 on the loopback address refuses connections at once: no network is used.
        let cache = tempfile::tempdir().unwrap();
        let env = HubEnv { offline: false, endpoint: Some("http://127.0.0.1:1".into()), ..offline(cache.path()) };
        let err = resolve_with("org/remote", &[], &env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("download failed"), "{text}");
        assert!(text.contains("models--org--remote"), "{text}");
    }

    #[test]
    fn environment_settings() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
        };
        let env = HubEnv::from_vars(vars(&[("HOME", "/home/u")]));
        assert_eq!(env.cache, Some(PathBuf::from("/home/u/.cache/huggingface/hub")));
        assert!(!env.offline);
        let env = HubEnv::from_vars(vars(&[("HOME", "/home/u"), ("HF_HOME", "/data/hf"), ("HF_HUB_OFFLINE", "1")]));
        assert_eq!(env.cache, Some(PathBuf::from("/data/hf/hub")));
        assert!(env.offline);
        let env = HubEnv::from_vars(vars(&[
            ("HF_HOME", "/data/hf"),
            ("HF_HUB_CACHE", "/fast/hub"),
            ("HF_HUB_OFFLINE", "0"),
            ("HF_TOKEN", "hf_x"),
            ("HF_ENDPOINT", "http://mirror"),
        ]));
        assert_eq!(env.cache, Some(PathBuf::from("/fast/hub")));
        assert!(!env.offline);
        assert_eq!(env.token.as_deref(), Some("hf_x"));
        assert_eq!(env.endpoint.as_deref(), Some("http://mirror"));
        let env = HubEnv::from_vars(vars(&[("XDG_CACHE_HOME", "/xdg")]));
        assert_eq!(env.cache, Some(PathBuf::from("/xdg/huggingface/hub")));
        assert_eq!(HubEnv::from_vars(vars(&[])).cache, None);
    }
}
