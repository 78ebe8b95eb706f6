//! Every matrix product of the engine goes through [`matmul`]: `a @ b` over
//! equal leading (batch) dimensions, operands in place whether row-major or
//! transposed views, an optional frozen bias added in the same pass, and a
//! backward that computes a gradient only for the operands that track one
//! (candle's own matmul backward always computes both, frozen weights
//! included).
//!
//! On the CPU in f32, with the `blas` feature and a CBLAS library installed
//! (Intel MKL's `libmkl_rt` or OpenBLAS's `libopenblas.so.0`, or the one
//! `WORKER_BLAS` names; loaded on first use), products are `cblas_sgemm`
//! calls: their kernels use AVX-512 where the processor has it, while
//! candle's `gemm` runs AVX2 kernels on stable Rust. Everywhere else (no
//! library, other dtypes, accelerators) the forward is candle's matmul on
//! detached operands (cuBLAS on CUDA).

use std::sync::Mutex;

use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `a @ b (+ bias)`: `a` is `[.., m, k]`, `b` is `[.., k, n]` with the same
/// leading dimensions, `bias` (frozen, `[n]`) is added to every row.
pub fn matmul(a: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || ra != rb || a.dims()[..ra - 2] != b.dims()[..rb - 2] {
        candle_core::bail!("matmul: shapes {:?} and {:?}", a.dims(), b.dims());
    }
    if a.dim(ra - 1)? != b.dim(rb - 2)? {
        candle_core::bail!("matmul: inner dims of {:?} and {:?}", a.dims(), b.dims());
    }
    let blas = blas_ready(a, b);
    let tracked = a.track_op() || b.track_op();
    if !blas {
        let y = reference(&a.detach(), &b.detach())?;
        let y = match bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        if !tracked {
            return Ok(y);
        }
        return a.apply_op2(
            b,
            Product {
                bias: None,
                ready: Mutex::new(Some(y)),
            },
        );
    }
    let bias = match bias {
        Some(t) => Some(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    let op = Product {
        bias,
        ready: Mutex::new(None),
    };
    if tracked {
        a.apply_op2(b, op)
    } else {
        a.apply_op2_no_bwd(b, &op)
    }
}

/// `c + a @ b` for matrices (`[m, k] @ [k, n]` into `[m, n]`) that build
/// no gradient: on the CPU's BLAS path (f32) and on CUDA (f32, bf16), with
/// `c` a buffer nothing else holds, the product is accumulated into `c` in
/// place (beta = 1: no `[m, n]` temporary, no separate addition);
/// otherwise `c + a @ b`.
pub fn add_product(c: Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if c.track_op() || a.track_op() || b.track_op() {
        candle_core::bail!("add_product: operands must be detached");
    }
    let (m, n) = c.dims2()?;
    let (am, k) = a.dims2()?;
    if am != m || b.dims2()? != (k, n) {
        candle_core::bail!(
            "add_product: shapes {:?} + {:?} @ {:?}",
            c.dims(),
            a.dims(),
            b.dims()
        );
    }
    #[cfg(feature = "cuda")]
    if c.device().is_cuda() {
        return cuda_acc::add_product(c, a, b);
    }
    if !blas_ready(a, b) || c.dtype() != DType::F32 || !c.device().is_cpu() {
        return c + matmul(a, b, None)?;
    }
    let (mut out, shape) = match c.into_storage() {
        Ok((candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), shape)) => (v, shape),
        Ok(_) => candle_core::bail!("add_product: the buffer of an f32 CPU tensor is not f32"),
        Err(shared) => return shared + matmul(a, b, None)?,
    };
    out.truncate(m * n);
    {
        let (sa, la) = a.storage_and_layout();
        let (sb, lb) = b.storage_and_layout();
        let (candle_core::Storage::Cpu(sa), candle_core::Storage::Cpu(sb)) = (&*sa, &*sb) else {
            candle_core::bail!("add_product: operands on another device");
        };
        // SAFETY: `[f32]` and `[MaybeUninit<f32>]` have the same layout, and
        // every element is initialised (beta = 1 reads them).
        let c = unsafe {
            std::slice::from_raw_parts_mut(
                out.as_mut_ptr().cast::<std::mem::MaybeUninit<f32>>(),
                out.len(),
            )
        };
        cpu::products(sa, la, sb, lb, 1.0, c)?;
    }
    Tensor::from_vec(out, shape, &candle_core::Device::Cpu)
}

/// Whether the matrices of `x` are stored column by column (a
/// transposed view of row-major matrices).
fn column_major(x: &Tensor) -> bool {
    let (d, st) = (x.dims(), x.stride());
    let r = d.len();
    d[r - 2] > 1 && d[r - 1] > 1 && st[r - 2] == 1 && st[r - 1] != 1
}

/// candle's own product, with the strides its kernels accept.
fn reference(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match a.matmul(b) {
        Ok(y) => Ok(y),
        Err(_) => a.contiguous()?.matmul(&b.contiguous()?),
    }
}

/// The CPU f32 product in use: `"mkl"` or `"openblas"` (the CBLAS
/// library found), else `"candle"` (its `gemm` crate).
pub fn cpu_backend() -> &'static str {
    blas::name().unwrap_or("candle")
}

/// Whether [`matmul`] reads `t` as an operand in place whatever its
/// strides (the CPU's BLAS path), so that a strided view needs no copy.
pub fn reads_strided(t: &Tensor) -> bool {
    blas_ready(t, t)
}

fn blas_ready(a: &Tensor, b: &Tensor) -> bool {
    blas::sgemm().is_some()
        && a.device().is_cpu()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
}

struct Product {
    /// Frozen bias added to every output row (BLAS path).
    bias: Option<Vec<f32>>,
    /// The forward computed by candle (non-BLAS path), handed over once.
    ready: Mutex<Option<Tensor>>,
}

impl Product {
    fn take_ready(&self) -> Result<Tensor> {
        self.ready
            .lock()
            .map_err(|_| candle_core::Error::Msg("matmul: poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("matmul: forward ran twice".into()))
    }
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if let Ok(y) = self.take_ready() {
            return match super::attach::given_storage(y)? {
                (candle_core::Storage::Cpu(c), shape) => Ok((c, shape)),
                _ => candle_core::bail!("matmul: device mismatch"),
            };
        }
        cpu::gemm(s1, l1, s2, l2, self.bias.as_deref())
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match super::attach::given_storage(self.take_ready()?)? {
            (candle_core::Storage::Cuda(c), shape) => Ok((c, shape)),
            _ => candle_core::bail!("matmul: device mismatch"),
        }
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.detach();
        let r = a.rank();
        let t = |x: &Tensor| x.transpose(r - 2, r - 1);
        // An operand that is a transposed view (`k^T` in attention) gets
        // its gradient in the same order, computed transposed: the chain
        // of views above it then needs no element-by-element copy.
        let da = match a.track_op() {
            false => None,
            true if column_major(a) => Some(t(&matmul(&b.detach(), &t(&g)?, None)?)?),
            true => Some(matmul(&g, &t(&b.detach())?, None)?),
        };
        let db = match b.track_op() {
            false => None,
            true if column_major(b) => Some(t(&matmul(&t(&g)?, &a.detach(), None)?)?),
            true => Some(matmul(&t(&a.detach())?, &g, None)?),
        };
        Ok((da, db))
    }
}

pub(crate) mod cpu {
    //! The OpenBLAS forward: one `sgemm` per batch entry.

    use std::mem::MaybeUninit;

    use candle_core::{CpuStorage, Layout, Result, Shape};

    pub(crate) use super::blas::single_threaded;

    /// How one operand's matrices sit in memory.
    pub(crate) struct Operand<'a> {
        pub data: &'a [f32],
        /// Offset of each batch entry's first element.
        pub offsets: Vec<usize>,
        pub transposed: bool,
        pub ld: usize,
    }

    /// `s` under layout `l` as BLAS operands (in place when the strides
    /// allow it, else a row-major copy, returned beside it).
    pub(crate) fn operand<'a>(
        s: &'a CpuStorage,
        l: &Layout,
    ) -> Result<(Operand<'a>, Option<Vec<f32>>)> {
        let data = s.as_slice::<f32>()?;
        let dims = l.dims();
        let st = l.stride();
        let r = dims.len();
        let (rows, cols) = (dims[r - 2], dims[r - 1]);
        let (transposed, ld) = if (st[r - 1] == 1 || cols == 1) && (st[r - 2] >= cols || rows == 1)
        {
            (false, st[r - 2].max(cols))
        } else if (st[r - 2] == 1 || rows == 1) && (st[r - 1] >= rows || cols == 1) {
            (true, st[r - 1].max(rows))
        } else {
            // Neither layout: copy to row-major.
            let copy = gather(data, l);
            let batch: usize = dims[..r - 2].iter().product();
            let offsets = (0..batch).map(|i| i * rows * cols).collect();
            return Ok((
                Operand {
                    data: &[],
                    offsets,
                    transposed: false,
                    ld: cols,
                },
                Some(copy),
            ));
        };
        Ok((
            Operand {
                data,
                offsets: batch_offsets(l),
                transposed,
                ld,
            },
            None,
        ))
    }

    /// Offsets of each matrix of a batched layout, in row-major batch order.
    fn batch_offsets(l: &Layout) -> Vec<usize> {
        let r = l.dims().len();
        offsets(&l.dims()[..r - 2], &l.stride()[..r - 2], l.start_offset())
    }

    /// Storage offsets of every index of `dims`, in row-major order.
    fn offsets(dims: &[usize], stride: &[usize], start: usize) -> Vec<usize> {
        let mut out = vec![start];
        for (&n, &st) in dims.iter().zip(stride) {
            out = out
                .iter()
                .flat_map(|&o| (0..n).map(move |i| o + i * st))
                .collect();
        }
        out
    }

    fn gather(data: &[f32], l: &Layout) -> Vec<f32> {
        offsets(l.dims(), l.stride(), l.start_offset())
            .into_iter()
            .map(|o| data[o])
            .collect()
    }

    pub fn gemm(
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let r = l1.dims().len();
        let n = l2.dims()[r - 1];
        let mut dims = l1.dims()[..r - 1].to_vec();
        dims.push(n);
        // With no bias the product writes every output element (beta = 0
        // never reads C): the buffer is left unfilled.
        let len = dims.iter().product();
        let mut out: Vec<MaybeUninit<f32>> = Vec::with_capacity(len);
        out.resize_with(len, MaybeUninit::uninit);
        if let Some(bias) = bias {
            for row in out.chunks_mut(n) {
                for (o, &b) in row.iter_mut().zip(bias) {
                    o.write(b);
                }
            }
        }
        products(
            s1,
            l1,
            s2,
            l2,
            if bias.is_some() { 1.0 } else { 0.0 },
            &mut out,
        )?;
        // SAFETY: every element was written, by the bias rows or by sgemm
        // (beta = 0 writes all of C); MaybeUninit<f32> has f32's layout.
        let out = unsafe {
            let mut out = std::mem::ManuallyDrop::new(out);
            Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), out.len(), out.capacity())
        };
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    /// `c = a @ b + beta * c` for every batch entry of the operands, `c`
    /// row-major `[batch, m, n]` (read only when `beta` is not 0).
    pub(crate) fn products(
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        beta: f32,
        c: &mut [MaybeUninit<f32>],
    ) -> Result<()> {
        let (a, a_copy) = operand(s1, l1)?;
        let (b, b_copy) = operand(s2, l2)?;
        let ad = a_copy.as_deref().unwrap_or(a.data);
        let bd = b_copy.as_deref().unwrap_or(b.data);
        let r = l1.dims().len();
        let (m, k) = (l1.dims()[r - 2], l1.dims()[r - 1]);
        let n = l2.dims()[r - 1];
        let batch = a.offsets.len();
        if c.len() != batch * m * n {
            candle_core::bail!("matmul: output of {} for {batch} x {m} x {n}", c.len());
        }
        let call = |i: usize, c: &mut [MaybeUninit<f32>]| {
            sgemm_ld(
                (&ad[a.offsets[i]..], a.transposed, a.ld),
                (&bd[b.offsets[i]..], b.transposed, b.ld),
                (m, n, k),
                beta,
                (c, n),
            )
        };
        // Small products (attention heads) are single-threaded inside
        // OpenBLAS: spread the batch over the thread pool instead.
        if batch > 1 && m * n * k < 262_144 {
            use rayon::prelude::*;
            // One library thread per call: the batch is the parallelism
            // (MKL would otherwise start its own threads inside each task).
            c.par_chunks_mut(m * n)
                .enumerate()
                .for_each(|(i, c)| super::blas::single_threaded(|| call(i, c)));
        } else {
            for (i, c) in c.chunks_mut(m * n).enumerate() {
                call(i, c);
            }
        }
        Ok(())
    }

    /// `c = a @ b + beta * c` for one matrix pair, `c` row-major with rows
    /// `ldc` apart (`ldc >= n`).
    pub(crate) fn sgemm_ld(
        a: (&[f32], bool, usize),
        b: (&[f32], bool, usize),
        (m, n, k): (usize, usize, usize),
        beta: f32,
        (c, ldc): (&mut [MaybeUninit<f32>], usize),
    ) {
        const ROW_MAJOR: i32 = 101;
        let t = |x: bool| if x { 112 } else { 111 };
        let sgemm = super::blas::sgemm().expect("BLAS checked before the forward");
        assert!(
            ldc >= n && c.len() >= ldc * m.saturating_sub(1) + n,
            "sgemm: output too small"
        );
        // SAFETY: every operand slice starts at its matrix and holds at
        // least `ld * (rows - 1) + cols` elements (checked by the layout it
        // came from); `c` holds `ldc * (m - 1) + n` (asserted).
        unsafe {
            sgemm(
                ROW_MAJOR,
                t(a.1),
                t(b.1),
                m as i32,
                n as i32,
                k as i32,
                1.0,
                a.0.as_ptr(),
                a.2 as i32,
                b.0.as_ptr(),
                b.2 as i32,
                beta,
                c.as_mut_ptr().cast::<f32>(),
                ldc as i32,
            )
        }
    }
}

mod blas {
    //! A CBLAS library, opened on first use (so that a binary built with it
    //! runs unchanged where none is installed) after `main` has set its
    //! environment: `WORKER_BLAS` (a path or file name) when set, then on
    //! Intel processors MKL's `libmkl_rt`, then OpenBLAS, and on others
    //! OpenBLAS first: MKL runs its generic kernels there (no AVX-512 on an
    //! AVX-512 AMD EPYC; slower than OpenBLAS's in 11 of 12 measures of
    //! `bench/blas_ab.py`). An MKL whose OpenMP runtime cannot be loaded is
    //! skipped with a warning (it would end the process at its first
    //! product).

    use std::sync::OnceLock;

    /// `cblas_sgemm(layout, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
    pub type Sgemm = unsafe extern "C" fn(
        i32,
        i32,
        i32,
        i32,
        i32,
        i32,
        f32,
        *const f32,
        i32,
        *const f32,
        i32,
        f32,
        *mut f32,
        i32,
    );

    /// MKL's `MKL_Set_Num_Threads_Local(n)` (C interface): the calling thread's thread
    /// count for later calls (0 = back to the global one); returns the
    /// previous one.
    type SetThreadsLocal = unsafe extern "C" fn(i32) -> i32;

    struct Blas {
        #[cfg(feature = "blas")]
        _lib: libloading::Library,
        /// MKL's OpenMP runtime, loaded before its first product.
        #[cfg(feature = "blas")]
        _openmp: Option<libloading::Library>,
        sgemm: Sgemm,
        threads_local: Option<SetThreadsLocal>,
        name: &'static str,
    }

    /// Runs `f` with the library limited to one thread on this thread
    /// (where it can be told so: MKL; OpenBLAS keeps small products on the
    /// calling thread by itself).
    pub fn single_threaded<R>(f: impl FnOnce() -> R) -> R {
        let set = BLAS
            .get_or_init(open)
            .as_ref()
            .and_then(|b| b.threads_local);
        let Some(set) = set else {
            return f();
        };
        // SAFETY: only changes the calling thread's MKL thread count.
        let before = unsafe { set(1) };
        let r = f();
        // SAFETY: as above; puts back what this thread had.
        unsafe { set(before) };
        r
    }

    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

    /// The library's `cblas_sgemm`, when one could be opened.
    pub fn sgemm() -> Option<Sgemm> {
        BLAS.get_or_init(open).as_ref().map(|b| b.sgemm)
    }

    /// `"mkl"`, `"openblas"` or `"blas"` (another `WORKER_BLAS`).
    pub fn name() -> Option<&'static str> {
        BLAS.get_or_init(open).as_ref().map(|b| b.name)
    }

    /// The OpenBLAS kernel family for this processor, by its instruction set.
    /// OpenBLAS picks kernels by CPU model, and a release older than the
    /// processor falls back to its generic SSE3 ("Prescott") kernels, several
    /// times slower (Debian 12's 0.3.21 does so on recent Xeons): set as
    /// `OPENBLAS_CORETYPE` (unless already set) before the library is opened.
    #[cfg(feature = "blas")]
    fn openblas_core() -> Option<&'static str> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Some("SkylakeX");
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Some("Haswell");
            }
        }
        None
    }

    /// The library files tried in turn (after `WORKER_BLAS`, when set): MKL
    /// first on Intel processors only.
    #[cfg(feature = "blas")]
    pub(super) fn search_order(intel: bool) -> [&'static str; 6] {
        const MKL: [&str; 3] = ["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"];
        const OPENBLAS: [&str; 3] = ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"];
        let (first, then) = if intel {
            (MKL, OPENBLAS)
        } else {
            (OPENBLAS, MKL)
        };
        [first[0], first[1], first[2], then[0], then[1], then[2]]
    }

    /// Whether the processor's vendor is Intel (CPUID leaf 0).
    #[cfg(feature = "blas")]
    fn intel_cpu() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let id = std::arch::x86_64::__cpuid(0);
            let mut vendor = Vec::with_capacity(12);
            for word in [id.ebx, id.edx, id.ecx] {
                vendor.extend_from_slice(&word.to_le_bytes());
            }
            vendor == b"GenuineIntel"
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Which family a library file belongs to, by its name.
    #[cfg(feature = "blas")]
    fn family(file: &str) -> &'static str {
        if file.contains("mkl") {
            "mkl"
        } else if file.contains("openblas") {
            "openblas"
        } else {
            "blas"
        }
    }

    #[cfg(feature = "blas")]
    fn open() -> Option<Blas> {
        if std::env::var_os("OPENBLAS_CORETYPE").is_none() {
            if let Some(core) = openblas_core() {
                std::env::set_var("OPENBLAS_CORETYPE", core);
            }
        }
        // `WORKER_BLAS` first when set, then the usual order.
        let mut names: Vec<String> = match std::env::var("WORKER_BLAS") {
            Ok(chosen) if !chosen.is_empty() => vec![chosen],
            _ => Vec::new(),
        };
        names.extend(search_order(intel_cpu()).map(String::from));
        names.into_iter().find_map(|name| {
            // SAFETY: a CBLAS library's initialisers only read its
            // environment and start its thread pool.
            let lib = unsafe { libloading::Library::new(&name) }.ok()?;
            // SAFETY: the symbol has the CBLAS signature declared above.
            let sgemm = unsafe { *lib.get::<Sgemm>(b"cblas_sgemm\0").ok()? };
            // SAFETY: MKL's documented signature, declared above.
            let threads_local =
                unsafe { lib.get::<SetThreadsLocal>(b"MKL_Set_Num_Threads_Local\0") }
                    .ok()
                    .map(|f| *f);
            let family = family(&name);
            let openmp = match family {
                "mkl" => match mkl_openmp(&name) {
                    Some(omp) => Some(omp),
                    None => {
                        tracing::warn!(
                            library = %name,
                            "MKL's OpenMP runtime (libiomp5) cannot be loaded, so MKL \
                             would end the process at its first product: not using it \
                             (pip install intel-openmp, or another library)"
                        );
                        return None;
                    }
                },
                _ => None,
            };
            Some(Blas {
                _lib: lib,
                _openmp: openmp,
                sgemm,
                threads_local,
                name: family,
            })
        })
    }

    /// MKL's threading layer needs the OpenMP runtime it was built with
    /// (`libiomp5`) already loaded; without it the first product ends the
    /// process with a symbol lookup error. Loads it, from the MKL library's
    /// own folder when `name` is a path, else from the usual search path,
    /// with its symbols global; `None` where it is not found.
    #[cfg(feature = "blas")]
    fn mkl_openmp(name: &str) -> Option<libloading::Library> {
        let beside = std::path::Path::new(name)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.join("libiomp5.so"));
        let mut candidates = beside
            .into_iter()
            .chain([std::path::PathBuf::from("libiomp5.so")]);
        candidates.find_map(|path| {
            #[cfg(unix)]
            {
                use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
                // SAFETY: the OpenMP runtime's initialisers only read its
                // environment.
                unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) }
                    .ok()
                    .map(libloading::Library::from)
            }
            #[cfg(not(unix))]
            {
                // SAFETY: as above.
                unsafe { libloading::Library::new(&path) }.ok()
            }
        })
    }

    #[cfg(not(feature = "blas"))]
    fn open() -> Option<Blas> {
        None
    }
}

#[cfg(feature = "cuda")]
mod cuda_acc {
    //! `c += a @ b` by one cuBLAS call into `c`'s own buffer (beta = 1).

    use candle_core::cuda_backend::cudarc::cublas::{result::gemm_ex, sys, CudaBlas};
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
    use candle_core::op::BackpropOp;
    use candle_core::{DType, Layout, Result, Storage, Tensor};

    /// cuBLAS's operation and leading dimension for a `[rows, cols]`
    /// operand read column-major: `N` for row-major rows `ld` apart, `T`
    /// for a transposed view (columns `ld` apart); `None` for other strides.
    fn op_of(l: &Layout) -> Option<(sys::cublasOperation_t, i32)> {
        let (d, st) = (l.dims(), l.stride());
        if d.len() != 2 {
            return None;
        }
        let (rows, cols) = (d[0], d[1]);
        if st[1] == 1 && st[0] >= cols.max(1) {
            Some((sys::cublasOperation_t::CUBLAS_OP_N, st[0] as i32))
        } else if st[0] == 1 && st[1] >= rows.max(1) {
            Some((sys::cublasOperation_t::CUBLAS_OP_T, st[1] as i32))
        } else {
            None
        }
    }

    /// Row-major `c[m, n] += a[m, k] @ b[k, n]` is column-major
    /// `c^T[n, m] += b^T @ a^T`: cuBLAS's `A` is `b`, its `B` is `a`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn accumulate(
        blas: &CudaBlas,
        ty: sys::cudaDataType,
        (m, n, k): (usize, usize, usize),
        (op_a, ld_a, a): (sys::cublasOperation_t, i32, u64),
        (op_b, ld_b, b): (sys::cublasOperation_t, i32, u64),
        c: u64,
    ) -> Result<()> {
        let (alpha, beta) = (1f32, 1f32);
        gemm_ex(
            *blas.handle(),
            op_b,
            op_a,
            n as i32,
            m as i32,
            k as i32,
            (&alpha as *const f32).cast(),
            b as *const std::ffi::c_void,
            ty,
            ld_b,
            a as *const std::ffi::c_void,
            ty,
            ld_a,
            (&beta as *const f32).cast(),
            c as *mut std::ffi::c_void,
            ty,
            n as i32,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
        .map_err(|e| candle_core::Error::Msg(format!("add_product: cuBLAS: {e:?}")))
    }

    /// `c + a @ b` with `c`'s buffer taken when nothing else holds it (the
    /// caller checked shapes and that nothing tracks a gradient); the
    /// composed sum otherwise.
    pub(super) fn add_product(c: Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let dtype = c.dtype();
        let ty = match dtype {
            DType::F32 => sys::cudaDataType::CUDA_R_32F,
            DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
            _ => return c + super::matmul(a, b, None)?,
        };
        let same = a.dtype() == dtype
            && b.dtype() == dtype
            && a.device().same_device(c.device())
            && b.device().same_device(c.device());
        let (Some((op_a, ld_a)), Some((op_b, ld_b)), true) =
            (op_of(a.layout()), op_of(b.layout()), same)
        else {
            return c + super::matmul(a, b, None)?;
        };
        let (m, n) = c.dims2()?;
        let k = a.dims2()?.1;
        let (mut out, shape) = match c.into_storage() {
            Ok((Storage::Cuda(s), shape)) => (s, shape),
            Ok(_) => candle_core::bail!("add_product: a CUDA tensor's buffer off the GPU"),
            Err(shared) => return shared + super::matmul(a, b, None)?,
        };
        {
            let (sa, la) = a.storage_and_layout();
            let (sb, lb) = b.storage_and_layout();
            let (Storage::Cuda(sa), Storage::Cuda(sb)) = (&*sa, &*sb) else {
                candle_core::bail!("add_product: operands off the GPU");
            };
            let dev = out.device.clone();
            let stream = dev.cuda_stream();
            let blas = dev.cublas_handle();
            macro_rules! run {
                ($t:ty) => {{
                    let av = sa.as_cuda_slice::<$t>()?.slice(la.start_offset()..);
                    let bv = sb.as_cuda_slice::<$t>()?.slice(lb.start_offset()..);
                    let cs = out.as_cuda_slice_mut::<$t>()?;
                    let (ap, _ga) = av.device_ptr(&stream);
                    let (bp, _gb) = bv.device_ptr(&stream);
                    let (cp, _gc) = cs.device_ptr_mut(&stream);
                    // SAFETY: `a` and `b` hold `[m, k]` and `[k, n]` with the
                    // strides `op_of` read; `c` holds `m * n` elements,
                    // row-major from its start.
                    unsafe {
                        accumulate(&blas, ty, (m, n, k), (op_a, ld_a, ap), (op_b, ld_b, bp), cp)
                    }
                }};
            }
            match dtype {
                DType::F32 => run!(f32)?,
                _ => run!(half::bf16)?,
            }
        }
        candle_core::note_dispatch("add_product");
        Ok(Tensor::from_storage(
            Storage::Cuda(out),
            shape,
            BackpropOp::none(),
            false,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// MKL is tried first on Intel processors only (elsewhere it runs its
    /// generic kernels); both libraries are tried either way.
    #[cfg(feature = "blas")]
    #[test]
    fn mkl_first_on_intel_only() {
        let intel = blas::search_order(true);
        let other = blas::search_order(false);
        assert_eq!(intel[0], "libmkl_rt.so.3");
        assert_eq!(other[0], "libopenblas.so.0");
        assert_eq!(other[3], "libmkl_rt.so.3");
        let mut a = intel.to_vec();
        let mut b = other.to_vec();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    /// Forward and both gradients against candle's matmul, for operands
    /// given row-major or as transposed views.
    #[test]
    fn matches_candle_in_every_layout() {
        let dev = Device::Cpu;
        for lead in [vec![], vec![3], vec![2, 3]] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let shape = |r: usize, c: usize, t: bool| {
                    let mut d = lead.clone();
                    d.extend(if t { [c, r] } else { [r, c] });
                    d
                };
                let a0 = Tensor::randn(0f32, 1.0, shape(5, 7, ta), &dev).unwrap();
                let b0 = Tensor::randn(0f32, 1.0, shape(7, 4, tb), &dev).unwrap();
                let proj = Tensor::randn(0f32, 1.0, shape(5, 4, false), &dev).unwrap();
                let r = a0.rank();
                let view = |t: &Tensor, tr: bool| {
                    if tr {
                        t.transpose(r - 2, r - 1).unwrap()
                    } else {
                        t.clone()
                    }
                };
                let run = |ours: bool| {
                    let a = Var::from_tensor(&a0).unwrap();
                    let b = Var::from_tensor(&b0).unwrap();
                    let (av, bv) = (view(a.as_tensor(), ta), view(b.as_tensor(), tb));
                    let y = if ours {
                        matmul(&av, &bv, None).unwrap()
                    } else {
                        av.contiguous()
                            .unwrap()
                            .matmul(&bv.contiguous().unwrap())
                            .unwrap()
                    };
                    let g = (&y * &proj).unwrap().sum_all().unwrap().backward().unwrap();
                    (
                        y,
                        g.get(a.as_tensor()).unwrap().clone(),
                        g.get(b.as_tensor()).unwrap().clone(),
                    )
                };
                let (y1, ga1, gb1) = run(true);
                let (y2, ga2, gb2) = run(false);
                assert!(max_diff(&y1, &y2) < 1e-4, "{lead:?} {ta} {tb}");
                assert!(max_diff(&ga1, &ga2) < 1e-4, "{lead:?} {ta} {tb}");
                assert!(max_diff(&gb1, &gb2) < 1e-4, "{lead:?} {ta} {tb}");
            }
        }
    }

    #[test]
    fn bias_is_added_and_frozen_operand_gets_no_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (6, 5), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
        let y = matmul(x.as_tensor(), &w.t().unwrap(), Some(&bias)).unwrap();
        let want = x
            .as_tensor()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        assert!(max_diff(&y, &want) < 1e-5);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&w).is_none());
        assert!(grads.get(&bias).is_none());
        let gx = grads.get(x.as_tensor()).unwrap();
        let want = Tensor::ones((6, 3), DType::F32, &dev)
            .unwrap()
            .matmul(&w)
            .unwrap();
        assert!(max_diff(gx, &want) < 1e-5);
    }
}
