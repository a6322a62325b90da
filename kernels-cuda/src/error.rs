//! The crate's error type: every fallible function returns [`Result`], nothing panics.

use std::path::PathBuf;

/// Everything that can go wrong between finding the CUDA libraries and launching a kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CUDA shared library could not be opened (no driver or toolkit, or not on the search path).
    #[error(
        "{lib} not found: none of {} could be opened (LD_LIBRARY_PATH={}, then the system library \
         path); install the NVIDIA driver (libcuda) or the CUDA toolkit (libnvrtc, libcublas), or \
         add its lib directory (e.g. /usr/local/cuda/lib64) to LD_LIBRARY_PATH",
        unix_names(lib, candidates),
        std::env::var("LD_LIBRARY_PATH").unwrap_or_else(|_| "<unset>".into())
    )]
    LibraryNotFound {
        /// The library's base name, e.g. `libcuda`.
        lib: &'static str,
        /// The file names that were tried, in order.
        candidates: Vec<String>,
        /// The directories that exist among those a library is looked for in
        /// ([`crate::libs::search_dirs`]).
        searched: Vec<PathBuf>,
    },

    /// A call into a CUDA library panicked (for example a symbol missing from an old driver);
    /// the panic was caught and turned into this error.
    #[error("{lib} failed during {during}: {message}")]
    LibraryPanic {
        /// The library involved, e.g. `libcuda`.
        lib: &'static str,
        /// What was being done.
        during: String,
        /// The panic's message.
        message: String,
    },

    /// A cuBLAS call returned an error status.
    #[error("cuBLAS error during {during}: {status}")]
    Cublas {
        /// What was being done.
        during: String,
        /// The status returned, e.g. `CUBLAS_STATUS_NOT_INITIALIZED`.
        status: String,
    },

    /// The driver is present but the requested device is not.
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices the driver sees.
        count: usize,
    },

    /// A CUDA driver API call failed.
    #[error("CUDA driver error during {during}: {source}")]
    Driver {
        /// What was being done.
        during: String,
        /// The driver's error.
        source: cudarc::driver::DriverError,
    },

    /// An NVRTC API call other than the compilation itself failed.
    #[error("NVRTC error during {during} of {file}: {source}")]
    Nvrtc {
        /// What was being done.
        during: &'static str,
        /// The `.cu` file concerned.
        file: &'static str,
        /// NVRTC's error code.
        source: cudarc::nvrtc::result::NvrtcError,
    },

    /// NVRTC rejected a kernel source; `log` is NVRTC's own log with line numbers in `file`.
    #[error("NVRTC failed to compile {file} for {arch} (options: {}):\n{log}", options.join(" "))]
    Compile {
        /// The `.cu` file that failed.
        file: &'static str,
        /// The target, e.g. `sm_90`.
        arch: String,
        /// The options passed to NVRTC.
        options: Vec<String>,
        /// NVRTC's compile log.
        log: String,
    },

    /// A compiled module lacks a kernel it is documented to export.
    #[error("kernel {kernel} not found in module {module} ({file}): {source}")]
    MissingKernel {
        /// The kernel's `extern "C"` name.
        kernel: String,
        /// The module's name.
        module: &'static str,
        /// The `.cu` file.
        file: &'static str,
        /// The driver's error.
        source: cudarc::driver::DriverError,
    },

    /// A launcher was given buffers or dimensions that do not fit together.
    #[error("{kernel}: {message}")]
    InvalidArgument {
        /// The kernel that was to be launched.
        kernel: String,
        /// What is wrong.
        message: String,
    },

    /// Reading or writing the on-disk kernel cache failed.
    #[error("kernel cache I/O on {}: {source}", path.display())]
    CacheIo {
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The distinct `lib.so*` names among `candidates`, comma-separated (cudarc also tries Windows-
/// style and duplicate names, which only clutter a message on Linux).
fn unix_names(lib: &str, candidates: &[String]) -> String {
    let prefix = format!("{lib}.so");
    let mut names: Vec<&str> = Vec::new();
    for name in candidates {
        if name.starts_with(&prefix) && !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    if names.is_empty() {
        candidates.join(", ")
    } else {
        names.join(", ")
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was being done to a driver error.
pub(crate) trait DriverContext<T> {
    /// Wraps the error as [`Error::Driver`] with `during` as its context.
    fn during(self, during: &str) -> Result<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn during(self, during: &str) -> Result<T> {
        self.map_err(|source| Error::Driver { during: during.to_string(), source })
    }
}
