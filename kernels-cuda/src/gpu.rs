//! Opening a device, loading kernel modules onto it, and [`probe`] for `ferrotune doctor`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use cudarc::nvrtc::Ptx;

use crate::compile::{self, CacheSource, CompiledModule};
use crate::error::{DriverContext, Error, Result};
use crate::libs::{self, CudaLibrary, LibraryInfo};
use crate::source::KernelModule;

/// One CUDA device with a stream to launch on and the kernel modules loaded so far.
///
/// Created by [`Gpu::new`], which fails with a clear [`Error`] (never a panic) when libcuda is
/// missing or the device does not exist. Modules are compiled (or taken from the caches, see
/// [`crate::compile`]) for the device's own architecture on first use.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (u32, u32),
    multiprocessors: u32,
    cache_dir: Option<PathBuf>,
    modules: Mutex<HashMap<&'static str, Arc<LoadedModule>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("multiprocessors", &self.multiprocessors)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

/// A module loaded onto a [`Gpu`], with its kernels looked up.
pub struct LoadedModule {
    /// The CUDA module.
    pub module: Arc<CudaModule>,
    /// Its kernels by `extern "C"` name.
    pub kernels: HashMap<&'static str, CudaFunction>,
    /// Where its cubin came from.
    pub source: CacheSource,
    /// Time to obtain the cubin and load it.
    pub load_time: Duration,
    /// The cache file, when there is a cache directory.
    pub disk_path: Option<PathBuf>,
    /// Why the cache file could not be written, if it could not.
    pub disk_error: Option<String>,
}

/// Whether a driver error is `CUDA_ERROR_NO_DEVICE`.
fn is_no_device(e: &DriverError) -> bool {
    e.0 == CUresult::CUDA_ERROR_NO_DEVICE
}

/// Initializes the driver and returns how many devices it sees (0 when it reports none).
fn device_count() -> Result<usize> {
    match cudarc::driver::result::init() {
        Err(e) if is_no_device(&e) => return Ok(0),
        other => other.during("cuInit")?,
    }
    let count = CudaContext::device_count().during("cuDeviceGetCount")?;
    Ok(count.max(0) as usize)
}

/// A device attribute as `u32`.
fn attribute(ctx: &CudaContext, attr: CUdevice_attribute, during: &str) -> Result<u32> {
    Ok(ctx.attribute(attr).during(during)?.max(0) as u32)
}

/// The compute capability of a context's device.
fn compute_capability(ctx: &CudaContext) -> Result<(u32, u32)> {
    let (major, minor) = ctx.compute_capability().during("reading the compute capability")?;
    Ok((major.max(0) as u32, minor.max(0) as u32))
}

impl Gpu {
    /// Opens device `ordinal` with the kernel cache directory of the environment
    /// ([`compile::default_cache_dir`]).
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_cache_dir(ordinal, compile::default_cache_dir())
    }

    /// Opens device `ordinal`, keeping compiled kernels in `cache_dir` (`None`: memory only).
    pub fn with_cache_dir(ordinal: usize, cache_dir: Option<PathBuf>) -> Result<Self> {
        CudaLibrary::Driver.call("opening a CUDA device", || {
            let count = device_count()?;
            if ordinal >= count {
                return Err(Error::NoDevice { ordinal, count });
            }
            let ctx = CudaContext::new(ordinal).during("creating the CUDA context")?;
            let stream = ctx.new_stream().during("creating a CUDA stream")?;
            Ok(Gpu {
                name: ctx.name().during("reading the device name")?,
                compute_capability: compute_capability(&ctx)?,
                multiprocessors: attribute(
                    &ctx,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                    "reading the multiprocessor count",
                )?,
                ctx,
                stream,
                cache_dir,
                modules: Mutex::new(HashMap::new()),
            })
        })
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launcher of this crate enqueues on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's compute capability, e.g. `(9, 0)`.
    pub fn compute_capability(&self) -> (u32, u32) {
        self.compute_capability
    }

    /// The NVRTC target for this device, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        compile::arch_name(self.compute_capability)
    }

    /// The number of streaming multiprocessors.
    pub fn multiprocessors(&self) -> u32 {
        self.multiprocessors
    }

    /// The on-disk kernel cache directory, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// Waits for everything enqueued on [`stream`](Self::stream).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().during("synchronizing the stream")
    }

    /// `module` loaded on this device: compiled (or taken from a cache) and loaded on first call,
    /// then kept. Module names must be unique.
    pub fn module(&self, module: &KernelModule) -> Result<Arc<LoadedModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(loaded) = modules.get(module.name) {
            return Ok(loaded.clone());
        }
        let loaded = Arc::new(self.load(module)?);
        modules.insert(module.name, loaded.clone());
        Ok(loaded)
    }

    /// The kernel `name` of `module`, loading the module if needed.
    pub fn kernel(&self, module: &KernelModule, name: &str) -> Result<CudaFunction> {
        self.module(module)?.kernels.get(name).cloned().ok_or_else(|| Error::InvalidArgument {
            kernel: name.to_string(),
            message: format!("not a kernel of module {} ({})", module.name, module.file),
        })
    }

    /// Compiles or fetches `module`'s cubin and loads it; a cached cubin that the driver rejects
    /// is compiled afresh once.
    fn load(&self, module: &KernelModule) -> Result<LoadedModule> {
        let start = Instant::now();
        let arch = self.arch();
        let compiled = compile::compile_module(module, &arch, self.cache_dir())?;
        let (cuda_module, compiled) = match self.load_image(&compiled) {
            Ok(loaded) => (loaded, compiled),
            Err(_) if compiled.source != CacheSource::Compiled => {
                let fresh = compile::recompile_module(module, &arch, self.cache_dir())?;
                (self.load_image(&fresh)?, fresh)
            }
            Err(e) => return Err(e),
        };
        let during = format!("loading module {} ({})", module.name, module.file);
        CudaLibrary::Driver.call(&during, || {
            let mut kernels = HashMap::new();
            for &kernel in module.kernels {
                let function = cuda_module.load_function(kernel).map_err(|source| Error::MissingKernel {
                    kernel: kernel.to_string(),
                    module: module.name,
                    file: module.file,
                    source,
                })?;
                kernels.insert(kernel, function);
            }
            Ok(LoadedModule {
                module: cuda_module,
                kernels,
                source: compiled.source,
                load_time: start.elapsed(),
                disk_path: compiled.disk_path,
                disk_error: compiled.disk_error,
            })
        })
    }

    /// Loads a cubin into this context.
    fn load_image(&self, compiled: &CompiledModule) -> Result<Arc<CudaModule>> {
        CudaLibrary::Driver.call("loading a cubin", || {
            self.ctx.load_module(Ptx::from_binary(compiled.image.to_vec())).during("cuModuleLoadData")
        })
    }
}

/// One device as seen by [`probe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its ordinal.
    pub ordinal: usize,
    /// Its name.
    pub name: String,
    /// Its compute capability.
    pub compute_capability: (u32, u32),
    /// The NVRTC target ([`compile::arch_name`]).
    pub arch: String,
    /// Total memory in bytes.
    pub total_memory: usize,
    /// Free memory in bytes when probed.
    pub free_memory: usize,
    /// Streaming multiprocessors.
    pub multiprocessors: u32,
    /// Whether bf16 arithmetic is supported (compute capability 8.0 or newer).
    pub bf16: bool,
}

/// What `ferrotune doctor` reports about CUDA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// The newest CUDA version the driver supports, e.g. `(13, 0)`.
    pub driver_cuda_version: (u32, u32),
    /// The NVIDIA kernel module's version (`/proc/driver/nvidia/version`), e.g. `580.65.06`.
    pub kernel_driver_version: Option<String>,
    /// libnvrtc's version, when it can be loaded.
    pub nvrtc_version: Option<(u32, u32)>,
    /// libcublas's version (major, minor, patch), when it can be loaded.
    pub cublas_version: Option<(u32, u32, u32)>,
    /// Every device the driver sees (empty when it sees none).
    pub devices: Vec<DeviceInfo>,
    /// Where libcuda, libnvrtc and libcublas were found.
    pub libraries: Vec<LibraryInfo>,
}

/// Reports the driver, the devices, the NVRTC and cuBLAS versions and the libraries' paths.
///
/// Fails only when libcuda cannot be loaded or the driver errs; a driver without devices gives
/// an empty `devices`, a missing libnvrtc or libcublas a `None` version (see `libraries`).
pub fn probe() -> Result<GpuInfo> {
    let (driver_cuda_version, devices) = CudaLibrary::Driver.call("probing CUDA devices", || {
        let mut version = 0;
        // SAFETY: plain out-parameter.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result().during("cuDriverGetVersion")?;
        let count = device_count()?;
        let devices = (0..count).map(probe_device).collect::<Result<Vec<_>>>()?;
        Ok((split_version(version), devices))
    })?;
    Ok(GpuInfo {
        driver_cuda_version,
        kernel_driver_version: kernel_driver_version(),
        nvrtc_version: compile::nvrtc_version().ok(),
        cublas_version: cublas_version().ok(),
        devices,
        libraries: libs::find_libraries(),
    })
}

/// Describes device `ordinal` (creates its primary context to read free memory).
fn probe_device(ordinal: usize) -> Result<DeviceInfo> {
    let ctx = CudaContext::new(ordinal).during("creating a CUDA context")?;
    let (free_memory, total_memory) = ctx.mem_get_info().during("cuMemGetInfo")?;
    let compute_capability = compute_capability(&ctx)?;
    Ok(DeviceInfo {
        ordinal,
        name: ctx.name().during("reading the device name")?,
        arch: compile::arch_name(compute_capability),
        bf16: compute_capability.0 >= 8,
        compute_capability,
        total_memory,
        free_memory,
        multiprocessors: attribute(
            &ctx,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            "reading the multiprocessor count",
        )?,
    })
}

/// `13000` -> `(13, 0)` (the driver's and runtime's version encoding).
fn split_version(version: i32) -> (u32, u32) {
    let v = version.max(0) as u32;
    (v / 1000, (v % 1000) / 10)
}

/// The NVIDIA kernel module's version from `/proc/driver/nvidia/version`, if readable.
fn kernel_driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    parse_kernel_driver_version(&text)
}

/// The version number on the `NVRM version:` line, e.g. `580.65.06`.
fn parse_kernel_driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|word| word.contains('.') && word.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string)
}

/// libcublas's version, without creating a handle.
fn cublas_version() -> Result<(u32, u32, u32)> {
    use cudarc::cublas::sys::{cublasGetProperty, cublasStatus_t, libraryPropertyType};
    CudaLibrary::Cublas.call("cublasGetProperty", || {
        let mut parts = [0u32; 3];
        for (part, kind) in parts.iter_mut().zip([
            libraryPropertyType::MAJOR_VERSION,
            libraryPropertyType::MINOR_VERSION,
            libraryPropertyType::PATCH_LEVEL,
        ]) {
            let mut value = 0;
            // SAFETY: plain out-parameter.
            let status = unsafe { cublasGetProperty(kind, &mut value) };
            if status != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(Error::Cublas { during: "cublasGetProperty".to_string(), status: format!("{status:?}") });
            }
            *part = value.max(0) as u32;
        }
        Ok((parts[0], parts[1], parts[2]))
    })
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let version = |v: Option<(u32, u32)>| v.map_or("not loadable".to_string(), |(a, b)| format!("{a}.{b}"));
        writeln!(
            f,
            "CUDA driver: supports CUDA {}.{} (kernel module {})",
            self.driver_cuda_version.0,
            self.driver_cuda_version.1,
            self.kernel_driver_version.as_deref().unwrap_or("unknown")
        )?;
        writeln!(f, "NVRTC: {}", version(self.nvrtc_version))?;
        writeln!(
            f,
            "cuBLAS: {}",
            self.cublas_version.map_or("not loadable".to_string(), |(a, b, c)| format!("{a}.{b}.{c}"))
        )?;
        if self.devices.is_empty() {
            writeln!(f, "devices: none")?;
        }
        for d in &self.devices {
            writeln!(
                f,
                "device {}: {} (compute {}.{}, {}, {} SMs, {:.1} of {:.1} GiB free, bf16 {})",
                d.ordinal,
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.arch,
                d.multiprocessors,
                d.free_memory as f64 / (1u64 << 30) as f64,
                d.total_memory as f64 / (1u64 << 30) as f64,
                if d.bf16 { "yes" } else { "no" }
            )?;
        }
        for lib in &self.libraries {
            let path = lib.path.as_ref().map_or("not found".to_string(), |p| p.display().to_string());
            let state = match (lib.loaded, lib.loadable) {
                (true, _) => "loaded",
                (false, true) => "loadable",
                (false, false) => "not loadable",
            };
            writeln!(f, "{}: {path} ({state})", lib.library.base_name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_libcuda_opening_a_gpu_names_libcuda() {
        if CudaLibrary::Driver.is_loadable() {
            println!("libcuda is present here: nothing to check");
            return;
        }
        let err = Gpu::new(0).expect_err("Gpu::new(0) succeeded without libcuda");
        assert!(matches!(err, Error::LibraryNotFound { lib: "libcuda", .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("libcuda"), "{message}");
        assert!(message.contains("libcuda.so.1"), "{message}");
        assert!(message.contains("LD_LIBRARY_PATH"), "{message}");
    }

    #[test]
    fn without_libcuda_probe_names_libcuda() {
        if CudaLibrary::Driver.is_loadable() {
            println!("libcuda is present here: nothing to check");
            return;
        }
        let err = probe().expect_err("probe() succeeded without libcuda");
        assert!(err.to_string().contains("libcuda"), "{err}");
    }

    #[test]
    fn gpu_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Gpu>();
        assert_send_sync::<LoadedModule>();
    }

    #[test]
    fn versions_split_like_cuda() {
        assert_eq!(split_version(13000), (13, 0));
        assert_eq!(split_version(12080), (12, 8));
        assert_eq!(split_version(-1), (0, 0));
    }

    #[test]
    fn kernel_driver_version_is_parsed() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:58 UTC 2025\nGCC version:  gcc version 13.3.0\n";
        assert_eq!(parse_kernel_driver_version(text).as_deref(), Some("580.65.06"));
        assert_eq!(parse_kernel_driver_version("GCC version: 13.3"), None);
    }

    #[test]
    fn gpu_info_displays_every_part() {
        let info = GpuInfo {
            driver_cuda_version: (13, 0),
            kernel_driver_version: Some("580.65.06".into()),
            nvrtc_version: Some((13, 0)),
            cublas_version: None,
            devices: vec![DeviceInfo {
                ordinal: 0,
                name: "NVIDIA H100".into(),
                compute_capability: (9, 0),
                arch: "sm_90".into(),
                total_memory: 80 << 30,
                free_memory: 79 << 30,
                multiprocessors: 132,
                bf16: true,
            }],
            libraries: vec![LibraryInfo {
                library: CudaLibrary::Driver,
                loadable: true,
                loaded: true,
                path: Some("/usr/lib/libcuda.so.1".into()),
            }],
        };
        let text = info.to_string();
        for part in [
            "CUDA 13.0",
            "580.65.06",
            "NVRTC: 13.0",
            "cuBLAS: not loadable",
            "sm_90",
            "132 SMs",
            "bf16 yes",
            "libcuda: /usr/lib/libcuda.so.1 (loaded)",
        ] {
            assert!(text.contains(part), "{part:?} missing from:\n{text}");
        }
    }
}
