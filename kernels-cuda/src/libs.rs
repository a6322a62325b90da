//! Finding the CUDA shared libraries before cudarc touches them.
//!
//! cudarc's `dynamic-loading` opens libcuda, libnvrtc and libcublas on first use and **panics**
//! when one is missing. Every entry point of this crate therefore asks [`CudaLibrary::require`]
//! first, which tries the same file names as cudarc (`cudarc::get_lib_name_candidates`) and
//! answers [`Error::LibraryNotFound`] naming the library; only then is cudarc called, and those
//! calls still run under `catch_unwind` (see [`crate::gpu`]) for the remaining panics, such as a
//! symbol missing from an old driver.
//!
//! For `ferrotune doctor`, [`find_libraries`] also reports which file was (or would be) loaded:
//! the one mapped into this process if it is already loaded (read from `/proc/self/maps`), else
//! the first candidate found in `LD_LIBRARY_PATH`, the standard system directories and the CUDA
//! toolkit's `lib64`.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One of the CUDA shared libraries opened at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CudaLibrary {
    /// The driver API, `libcuda` (ships with the NVIDIA driver).
    Driver,
    /// The run-time compiler, `libnvrtc` (ships with the CUDA toolkit).
    Nvrtc,
    /// BLAS, `libcublas` (ships with the CUDA toolkit).
    Cublas,
}

impl CudaLibrary {
    /// Every library, in the order they are needed.
    pub const ALL: [CudaLibrary; 3] = [CudaLibrary::Driver, CudaLibrary::Nvrtc, CudaLibrary::Cublas];

    /// The file's base name without suffix, e.g. `libcuda`.
    pub fn base_name(self) -> &'static str {
        match self {
            CudaLibrary::Driver => "libcuda",
            CudaLibrary::Nvrtc => "libnvrtc",
            CudaLibrary::Cublas => "libcublas",
        }
    }

    /// The names cudarc passes to `get_lib_name_candidates` for this library.
    fn cudarc_names(self) -> &'static [&'static str] {
        match self {
            CudaLibrary::Driver => &["cuda", "nvcuda"],
            CudaLibrary::Nvrtc => &["nvrtc"],
            CudaLibrary::Cublas => &["cublas"],
        }
    }

    /// The file names cudarc tries, in its order (e.g. `libcuda.so`, …, `libcuda.so.1`).
    pub fn candidates(self) -> Vec<String> {
        self.cudarc_names().iter().flat_map(|name| cudarc::get_lib_name_candidates(name)).collect()
    }

    /// Whether cudarc will be able to open this library (tries each candidate with `dlopen`).
    pub fn is_loadable(self) -> bool {
        // SAFETY: these only dlopen/dlclose candidate names; no symbol is called.
        unsafe {
            match self {
                CudaLibrary::Driver => cudarc::driver::sys::is_culib_present(),
                CudaLibrary::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                CudaLibrary::Cublas => cudarc::cublas::sys::is_culib_present(),
            }
        }
    }

    /// `Ok` when the library can be loaded, else [`Error::LibraryNotFound`] naming it.
    pub fn require(self) -> Result<()> {
        if self.is_loadable() {
            Ok(())
        } else {
            Err(Error::LibraryNotFound {
                lib: self.base_name(),
                candidates: self.candidates(),
                searched: search_dirs(),
            })
        }
    }

    /// Runs `f`, which calls into this library through cudarc, after [`require`](Self::require)
    /// succeeded; a panic inside `f` (cudarc panics on a missing symbol) becomes
    /// [`Error::LibraryPanic`] naming the library and `during`.
    pub(crate) fn call<T>(self, during: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.require()?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Error::LibraryPanic { lib: self.base_name(), during: during.to_string(), message })
        })
    }

    /// The file of this library mapped into the current process, if it is loaded.
    pub fn loaded_path(self) -> Option<PathBuf> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .map(Path::new)
            .find(|path| self.is_file_of(path))
            .map(Path::to_path_buf)
    }

    /// Whether `path` names a file of this library (`libcuda.so`, `libcuda.so.580.65.06`, but
    /// not `libcudart.so` nor `libcublasLt.so`).
    fn is_file_of(self, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        let stem = format!("{}{}", self.base_name(), DLL_SUFFIX);
        name == stem || name.starts_with(&format!("{stem}."))
    }
}

/// Where a library was found, for `ferrotune doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibraryInfo {
    /// Which library.
    pub library: CudaLibrary,
    /// Whether cudarc can open it (a `dlopen` of one of its candidate names succeeds).
    pub loadable: bool,
    /// Whether it is already mapped into this process.
    pub loaded: bool,
    /// The file that was loaded, or else the first candidate found on disk, or `None`.
    pub path: Option<PathBuf>,
}

/// Looks for every [`CudaLibrary`]; never fails.
pub fn find_libraries() -> Vec<LibraryInfo> {
    let dirs = search_dirs();
    CudaLibrary::ALL
        .iter()
        .map(|&library| {
            let loaded = library.loaded_path();
            LibraryInfo {
                library,
                loadable: library.is_loadable(),
                loaded: loaded.is_some(),
                path: loaded.or_else(|| find_in(&dirs, &library.candidates())),
            }
        })
        .collect()
}

/// The directories looked in for a library's path: `LD_LIBRARY_PATH`, the system library
/// directories, the NVIDIA container toolkit's, then the CUDA toolkit's (`$CUDA_HOME/lib64`,
/// `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`). Only existing directories, each once.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
    }
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    for dir in [
        format!("/usr/lib/{triple}"),
        "/usr/lib64".into(),
        "/usr/lib".into(),
        format!("/lib/{triple}"),
        "/lib64".into(),
        "/lib".into(),
        "/usr/local/nvidia/lib64".into(),
        "/usr/lib/wsl/lib".into(),
    ] {
        dirs.push(PathBuf::from(dir));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            dirs.push(PathBuf::from(root).join("lib64"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));

    let mut unique: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if dir.is_dir() && !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// The first `dir/candidate` that exists, trying every directory for one name before the next
/// name (the order in which cudarc tries names).
pub fn find_in(dirs: &[PathBuf], candidates: &[String]) -> Option<PathBuf> {
    candidates
        .iter()
        .filter(|name| name.starts_with(DLL_PREFIX))
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_cudarc() {
        let names = CudaLibrary::Driver.candidates();
        assert!(names.contains(&"libcuda.so".to_string()), "{names:?}");
        assert!(names.contains(&"libcuda.so.1".to_string()), "{names:?}");
        assert!(CudaLibrary::Nvrtc.candidates().contains(&"libnvrtc.so".to_string()));
        assert!(CudaLibrary::Cublas.candidates().contains(&"libcublas.so".to_string()));
    }

    #[test]
    fn file_names_match_only_their_library() {
        let lib = CudaLibrary::Driver;
        assert!(lib.is_file_of(Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06")));
        assert!(lib.is_file_of(Path::new("libcuda.so")));
        assert!(!lib.is_file_of(Path::new("/usr/local/cuda/lib64/libcudart.so.13")));
        assert!(CudaLibrary::Cublas.is_file_of(Path::new("libcublas.so.13")));
        assert!(!CudaLibrary::Cublas.is_file_of(Path::new("libcublasLt.so.13")));
    }

    #[test]
    fn find_in_prefers_earlier_names_then_earlier_dirs() {
        let root = std::env::temp_dir().join(format!("ferrotune-libs-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("libfoo.so.1"), b"").unwrap();
        std::fs::write(b.join("libfoo.so"), b"").unwrap();
        let dirs = vec![a.clone(), b.clone()];
        let names = vec!["libfoo.so".to_string(), "libfoo.so.1".to_string()];
        assert_eq!(find_in(&dirs, &names), Some(b.join("libfoo.so")));
        assert_eq!(find_in(&dirs, &names[1..]), Some(a.join("libfoo.so.1")));
        assert_eq!(find_in(&dirs, &["libbar.so".to_string()]), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn find_libraries_never_fails_and_covers_all() {
        let found = find_libraries();
        assert_eq!(found.len(), 3);
        for info in &found {
            if info.loaded {
                assert!(info.path.is_some(), "{info:?}");
            }
        }
    }
}
