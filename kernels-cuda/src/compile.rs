//! NVRTC compilation of the shipped sources, cached in memory and on disk.
//!
//! A module is compiled for the device's own architecture (`--gpu-architecture=sm_XX`) straight
//! to a cubin, so loading it needs no driver JIT and no PTX-version agreement with the driver.
//! Results are cached
//!
//! - in memory, per process: a second request for the same module, architecture and options is
//!   answered without NVRTC (counted in [`CacheStats::memory_hits`]);
//! - on disk, across processes: `<cache dir>/<module>-<key>-sm_XX.cubin`, where `<key>` starts the
//!   SHA-256 of the source, its headers, the NVRTC options and the NVRTC version
//!   ([`cache_key`]). Files are written to a temporary name and renamed into place, so a reader
//!   never sees half a file; a file that does not look like a cubin (ELF) is ignored and
//!   rewritten. The cache directory is `$FERROTUNE_CACHE/kernels`, else
//!   `$XDG_CACHE_HOME/ferrotune/kernels`, else `~/.cache/ferrotune/kernels` ([`cache_dir_from`]).
//!
//! A failure to write the disk cache is not an error: the compiled module is still returned, with
//! the reason in [`CompiledModule::disk_error`].

use std::collections::HashMap;
use std::ffi::{c_char, CString, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::libs::CudaLibrary;
use crate::source::KernelModule;

/// The first bytes of every cubin (an ELF file).
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// Bumped whenever the cache's layout or the meaning of its key changes.
const CACHE_FORMAT: &str = "ferrotune-kernel-cache v1";

/// Where a [`CompiledModule`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSource {
    /// This process had compiled or loaded it before.
    Memory,
    /// Read from the on-disk cache.
    Disk,
    /// Compiled by NVRTC just now.
    Compiled,
}

impl std::fmt::Display for CacheSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CacheSource::Memory => "memory",
            CacheSource::Disk => "disk",
            CacheSource::Compiled => "compiled",
        })
    }
}

/// A module's cubin and how it was obtained.
#[derive(Clone, Debug)]
pub struct CompiledModule {
    /// The cubin, ready for `cuModuleLoadData`.
    pub image: Arc<Vec<u8>>,
    /// Where it came from.
    pub source: CacheSource,
    /// The full hex SHA-256 cache key.
    pub key: String,
    /// The on-disk cache file (read or written), when there is a cache directory.
    pub disk_path: Option<PathBuf>,
    /// Why the on-disk cache could not be written, if it could not.
    pub disk_error: Option<String>,
}

/// Process-wide counters of how compile requests were answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules compiled by NVRTC.
    pub compiles: u64,
    /// Modules read from the disk cache.
    pub disk_hits: u64,
    /// Requests answered from memory.
    pub memory_hits: u64,
}

static COMPILES: AtomicU64 = AtomicU64::new(0);
static DISK_HITS: AtomicU64 = AtomicU64::new(0);
static MEMORY_HITS: AtomicU64 = AtomicU64::new(0);

/// The counters so far in this process.
pub fn cache_stats() -> CacheStats {
    CacheStats {
        compiles: COMPILES.load(Ordering::Relaxed),
        disk_hits: DISK_HITS.load(Ordering::Relaxed),
        memory_hits: MEMORY_HITS.load(Ordering::Relaxed),
    }
}

/// Cubins compiled or read in this process, by cache key.
static MEMORY: MemoryCache = Mutex::new(None);

/// The NVRTC target for a compute capability, e.g. `(9, 0)` -> `sm_90`.
pub fn arch_name(compute_capability: (u32, u32)) -> String {
    format!("sm_{}{}", compute_capability.0, compute_capability.1)
}

/// The CUDA include directories that exist: `$CUDA_HOME/include`, `$CUDA_PATH/include`,
/// `/usr/local/cuda/include` (for `cuda_bf16.h`).
pub fn include_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("include"))
        .collect();
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    let mut unique = Vec::new();
    for dir in dirs {
        if dir.is_dir() && !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// The NVRTC options for `arch` (e.g. `sm_90`): C++17 and the given include directories.
pub fn compile_options(arch: &str, include_dirs: &[PathBuf]) -> Vec<String> {
    let mut options = vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string()];
    options.extend(include_dirs.iter().map(|dir| format!("--include-path={}", dir.display())));
    options
}

/// The hex SHA-256 identifying one compilation: the module's name, file, source and headers, the
/// options (which name the architecture) and the NVRTC version.
pub fn cache_key(module: &KernelModule, options: &[String], nvrtc_version: (u32, u32)) -> String {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(CACHE_FORMAT.as_bytes());
    field(module.name.as_bytes());
    field(module.file.as_bytes());
    field(module.source.as_bytes());
    for header in module.headers {
        field(header.name.as_bytes());
        field(header.source.as_bytes());
    }
    for option in options {
        field(option.as_bytes());
    }
    field(format!("nvrtc {}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache file's name: `<module>-<first 16 hex digits of key>-<arch>.cubin`.
pub fn cache_file_name(module: &str, key: &str, arch: &str) -> String {
    format!("{module}-{}-{arch}.cubin", &key[..key.len().min(16)])
}

/// The kernel cache directory of this process's environment (see [`cache_dir_from`]).
pub fn default_cache_dir() -> Option<PathBuf> {
    cache_dir_from(std::env::var_os("FERROTUNE_CACHE"), std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// The kernel cache directory given the values of `FERROTUNE_CACHE`, `XDG_CACHE_HOME` and
/// `HOME`: `$FERROTUNE_CACHE/kernels`, else `$XDG_CACHE_HOME/ferrotune/kernels`, else
/// `$HOME/.cache/ferrotune/kernels`; empty values count as unset; `None` without any.
pub fn cache_dir_from(
    ferrotune_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(ferrotune_cache)
        .map(|root| root.join("kernels"))
        .or_else(|| set(xdg_cache_home).map(|x| x.join("ferrotune").join("kernels")))
        .or_else(|| set(home).map(|h| h.join(".cache").join("ferrotune").join("kernels")))
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same directory (created if
/// needed), flushed to disk, then renamed over `path`. On failure the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::CacheIo { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.as_deref().unwrap_or("cache"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::CacheIo { path: path.to_path_buf(), source }
    })
}

/// The cubin stored at `path`, or `None` if it is missing, unreadable or not an ELF file.
pub fn read_cached(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok().filter(|bytes| bytes.starts_with(ELF_MAGIC))
}

/// The version of the loadable libnvrtc, e.g. `(13, 0)`.
pub fn nvrtc_version() -> Result<(u32, u32)> {
    CudaLibrary::Nvrtc.call("nvrtcVersion", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: plain out-parameters.
        unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|source| Error::Nvrtc {
            during: "nvrtcVersion",
            file: "-",
            source,
        })?;
        Ok((major as u32, minor as u32))
    })
}

/// The cubin of `module` for `arch` (e.g. `sm_90`): from memory, else from `cache_dir`, else
/// compiled by NVRTC (then kept in memory and written to `cache_dir`).
pub fn compile_module(module: &KernelModule, arch: &str, cache_dir: Option<&Path>) -> Result<CompiledModule> {
    compile_with(module, arch, cache_dir, true)
}

/// Compiles `module` with NVRTC even if a cached copy exists, replacing the memory and disk
/// copies (used when a cached cubin fails to load).
pub(crate) fn recompile_module(module: &KernelModule, arch: &str, cache_dir: Option<&Path>) -> Result<CompiledModule> {
    compile_with(module, arch, cache_dir, false)
}

fn compile_with(
    module: &KernelModule,
    arch: &str,
    cache_dir: Option<&Path>,
    use_cached: bool,
) -> Result<CompiledModule> {
    let options = compile_options(arch, &include_dirs());
    let key = cache_key(module, &options, nvrtc_version()?);
    let disk_path = cache_dir.map(|dir| dir.join(cache_file_name(module.name, &key, arch)));
    let (image, source, disk_error) =
        lookup_or_build(&MEMORY, &key, disk_path.as_deref(), use_cached, || nvrtc_compile(module, arch, &options))?;
    Ok(CompiledModule { image, source, key, disk_path, disk_error })
}

/// A map from cache key to cubin, filled on first use.
type MemoryCache = Mutex<Option<HashMap<String, Arc<Vec<u8>>>>>;

/// The cache logic, apart from NVRTC: answers `key` from `memory`, else from `disk_path`, else
/// calls `build` and stores its result in both (a disk write failure is returned as the third
/// value, not as an error). With `use_cached` false, always builds. The lock on `memory` is held
/// throughout, so concurrent requests never build the same key twice.
fn lookup_or_build(
    memory: &MemoryCache,
    key: &str,
    disk_path: Option<&Path>,
    use_cached: bool,
    build: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Arc<Vec<u8>>, CacheSource, Option<String>)> {
    let mut guard = memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if use_cached {
        if let Some(image) = map.get(key) {
            MEMORY_HITS.fetch_add(1, Ordering::Relaxed);
            return Ok((image.clone(), CacheSource::Memory, None));
        }
        if let Some(bytes) = disk_path.and_then(read_cached) {
            DISK_HITS.fetch_add(1, Ordering::Relaxed);
            let image = Arc::new(bytes);
            map.insert(key.to_string(), image.clone());
            return Ok((image, CacheSource::Disk, None));
        }
    }
    let image = Arc::new(build()?);
    COMPILES.fetch_add(1, Ordering::Relaxed);
    map.insert(key.to_string(), image.clone());
    let disk_error = disk_path.and_then(|path| write_atomic(path, &image).err()).map(|e| e.to_string());
    Ok((image, CacheSource::Compiled, disk_error))
}

/// Destroys an NVRTC program when dropped.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

/// A C string, or a compile error naming the module when `s` contains a NUL byte.
fn c_string(module: &KernelModule, arch: &str, what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Compile {
        file: module.file,
        arch: arch.to_string(),
        options: Vec::new(),
        log: format!("{what} contains a NUL byte"),
    })
}

/// Compiles `module` to a cubin with NVRTC; a rejected source gives [`Error::Compile`] with the
/// log.
fn nvrtc_compile(module: &KernelModule, arch: &str, options: &[String]) -> Result<Vec<u8>> {
    let during = format!("compiling {} for {arch}", module.file);
    CudaLibrary::Nvrtc.call(&during, || {
        let nvrtc_err = |during: &'static str| move |source| Error::Nvrtc { during, file: module.file, source };
        let source = c_string(module, arch, "the source", module.source)?;
        let file = c_string(module, arch, "the file name", module.file)?;
        let mut header_sources = Vec::new();
        let mut header_names = Vec::new();
        for header in module.headers {
            header_sources.push(c_string(module, arch, header.name, header.source)?);
            header_names.push(c_string(module, arch, "a header name", header.name)?);
        }
        let header_source_ptrs: Vec<*const c_char> = header_sources.iter().map(|s| s.as_ptr()).collect();
        let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();

        let mut raw = std::ptr::null_mut();
        // SAFETY: every pointer refers to a live NUL-terminated string; the arrays hold
        // `headers.len()` entries each.
        unsafe {
            nvrtc_sys::nvrtcCreateProgram(
                &mut raw,
                source.as_ptr(),
                file.as_ptr(),
                module.headers.len() as i32,
                header_source_ptrs.as_ptr(),
                header_name_ptrs.as_ptr(),
            )
        }
        .result()
        .map_err(nvrtc_err("nvrtcCreateProgram"))?;
        let program = Program(raw);

        // SAFETY: `program` is a live program.
        let compiled = unsafe { nvrtc::compile_program(program.0, options) };
        if compiled.is_err() {
            // SAFETY: as above.
            let log = unsafe { nvrtc::get_program_log(program.0) }
                .map(|raw| {
                    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_else(|e| format!("(no log: {e})"));
            return Err(Error::Compile { file: module.file, arch: arch.to_string(), options: options.to_vec(), log });
        }

        let mut size = 0usize;
        // SAFETY: `program` compiled successfully; `size` is an out-parameter.
        unsafe { nvrtc_sys::nvrtcGetCUBINSize(program.0, &mut size) }
            .result()
            .map_err(nvrtc_err("nvrtcGetCUBINSize"))?;
        let mut cubin = vec![0u8; size];
        // SAFETY: `cubin` holds the `size` bytes NVRTC reported.
        unsafe { nvrtc_sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast()) }
            .result()
            .map_err(nvrtc_err("nvrtcGetCUBIN"))?;
        Ok(cubin)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{ELEMENTWISE, RMS_NORM};

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferrotune-compile-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn cache_key_is_stable_hex_and_sensitive_to_every_input() {
        let opts = compile_options("sm_90", &[PathBuf::from("/usr/local/cuda/include")]);
        let key = cache_key(&RMS_NORM, &opts, (13, 0));
        assert_eq!(key.len(), 64);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(key, cache_key(&RMS_NORM, &opts, (13, 0)), "not deterministic");

        let other_arch = compile_options("sm_80", &[PathBuf::from("/usr/local/cuda/include")]);
        let mut edited = RMS_NORM;
        edited.source = "extern \"C\" __global__ void k() {}";
        let mut edited_header = RMS_NORM;
        edited_header.headers = &[];
        for (what, other) in [
            ("arch", cache_key(&RMS_NORM, &other_arch, (13, 0))),
            ("nvrtc version", cache_key(&RMS_NORM, &opts, (12, 8))),
            ("module", cache_key(&ELEMENTWISE, &opts, (13, 0))),
            ("source", cache_key(&edited, &opts, (13, 0))),
            ("headers", cache_key(&edited_header, &opts, (13, 0))),
            ("options", cache_key(&RMS_NORM, &opts[..2], (13, 0))),
        ] {
            assert_ne!(key, other, "key ignores the {what}");
        }
    }

    #[test]
    fn cache_key_matches_a_known_sha256() {
        // SHA-256 of the empty string, to pin the hash function itself.
        let empty: String = Sha256::digest(b"").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(empty, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn options_name_arch_std_and_includes() {
        let opts = compile_options("sm_90", &[PathBuf::from("/x/include")]);
        assert_eq!(opts, ["--gpu-architecture=sm_90", "--std=c++17", "--include-path=/x/include"]);
        assert_eq!(arch_name((9, 0)), "sm_90");
        assert_eq!(arch_name((12, 1)), "sm_121");
    }

    #[test]
    fn cache_file_name_has_module_key_prefix_and_arch() {
        let key = "0123456789abcdef0123456789abcdef";
        assert_eq!(cache_file_name("rms_norm", key, "sm_90"), "rms_norm-0123456789abcdef-sm_90.cubin");
    }

    #[test]
    fn cache_dir_precedence() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(cache_dir_from(s("/c"), s("/x"), s("/h")), Some(PathBuf::from("/c/kernels")));
        assert_eq!(cache_dir_from(s(""), s("/x"), s("/h")), Some(PathBuf::from("/x/ferrotune/kernels")));
        assert_eq!(cache_dir_from(None, None, s("/h")), Some(PathBuf::from("/h/.cache/ferrotune/kernels")));
        assert_eq!(cache_dir_from(None, s(""), None), None);
    }

    #[test]
    fn write_atomic_creates_overwrites_and_leaves_no_temp_files() {
        let dir = temp_dir("atomic");
        let path = dir.join("nested").join("m-abc-sm_90.cubin");
        write_atomic(&path, b"\x7fELF first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\x7fELF first");
        write_atomic(&path, b"\x7fELF second").unwrap();
        assert_eq!(read_cached(&path).unwrap(), b"\x7fELF second");
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [OsString::from("m-abc-sm_90.cubin")], "temp files left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_atomic_reports_the_path_when_it_cannot_write() {
        let dir = temp_dir("blocked");
        let blocker = dir.join("file");
        std::fs::write(&blocker, b"x").unwrap();
        // A directory cannot be created under a regular file.
        let err = write_atomic(&blocker.join("m.cubin"), b"\x7fELF").unwrap_err();
        assert!(matches!(err, Error::CacheIo { .. }), "{err}");
        assert!(err.to_string().contains("file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_cached_ignores_missing_and_non_elf_files() {
        let dir = temp_dir("read");
        assert_eq!(read_cached(&dir.join("absent.cubin")), None);
        std::fs::write(dir.join("junk.cubin"), b"garbage").unwrap();
        assert_eq!(read_cached(&dir.join("junk.cubin")), None);
        std::fs::write(dir.join("empty.cubin"), b"").unwrap();
        assert_eq!(read_cached(&dir.join("empty.cubin")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disk_cache_is_written_then_reused_by_a_fresh_process() {
        let dir = temp_dir("reuse");
        let path = dir.join(cache_file_name("m", "feedface", "sm_90"));
        let fake = b"\x7fELF fake cubin".to_vec();
        let build = |calls: &mut u32| {
            *calls += 1;
            Ok(fake.clone())
        };
        let mut calls = 0;

        // First process: compiles, keeps it in memory, writes the file.
        let first_process = MemoryCache::new(None);
        let (image, source, err) =
            lookup_or_build(&first_process, "k", Some(&path), true, || build(&mut calls)).unwrap();
        assert_eq!((source, err, calls), (CacheSource::Compiled, None, 1));
        assert_eq!(*image, fake);
        assert_eq!(std::fs::read(&path).unwrap(), fake);
        // Same process again: memory.
        let (_, source, _) = lookup_or_build(&first_process, "k", Some(&path), true, || build(&mut calls)).unwrap();
        assert_eq!((source, calls), (CacheSource::Memory, 1));

        // A fresh process (empty memory): the disk.
        let second_process = MemoryCache::new(None);
        let (image, source, _) =
            lookup_or_build(&second_process, "k", Some(&path), true, || build(&mut calls)).unwrap();
        assert_eq!((source, calls), (CacheSource::Disk, 1));
        assert_eq!(*image, fake);

        // A corrupt file is ignored and rewritten.
        std::fs::write(&path, b"garbage").unwrap();
        let third_process = MemoryCache::new(None);
        let (_, source, _) = lookup_or_build(&third_process, "k", Some(&path), true, || build(&mut calls)).unwrap();
        assert_eq!((source, calls), (CacheSource::Compiled, 2));
        assert_eq!(std::fs::read(&path).unwrap(), fake);

        // Forced rebuild skips both caches.
        let (_, source, _) = lookup_or_build(&third_process, "k", Some(&path), false, || build(&mut calls)).unwrap();
        assert_eq!((source, calls), (CacheSource::Compiled, 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_disk_cache_is_reported_not_fatal() {
        let dir = temp_dir("unwritable");
        std::fs::write(dir.join("file"), b"x").unwrap();
        let path = dir.join("file").join("m.cubin");
        let memory = MemoryCache::new(None);
        let (image, source, err) =
            lookup_or_build(&memory, "k", Some(&path), true, || Ok(b"\x7fELF".to_vec())).unwrap();
        assert_eq!((source, image.len()), (CacheSource::Compiled, 4));
        assert!(err.is_some_and(|e| e.contains("kernel cache I/O")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn build_errors_are_returned_and_nothing_is_cached() {
        let memory = MemoryCache::new(None);
        let failed = lookup_or_build(&memory, "k", None, true, || {
            Err(Error::InvalidArgument { kernel: "k".into(), message: "boom".into() })
        });
        assert!(failed.is_err());
        let (_, source, _) = lookup_or_build(&memory, "k", None, true, || Ok(b"\x7fELF".to_vec())).unwrap();
        assert_eq!(source, CacheSource::Compiled);
    }

    #[test]
    fn compiling_without_libnvrtc_names_it() {
        if CudaLibrary::Nvrtc.is_loadable() {
            println!("libnvrtc is present here: nothing to check");
            return;
        }
        let err = compile_module(&RMS_NORM, "sm_90", None).unwrap_err();
        assert!(matches!(err, Error::LibraryNotFound { lib: "libnvrtc", .. }), "{err}");
        assert!(err.to_string().contains("libnvrtc"), "{err}");
    }
}
