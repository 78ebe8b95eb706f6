// Fused CUDA kernels of the engine (built to PTX by worker/build.rs with
// nvcc when the `cuda` feature is on). Each has a CPU twin in
// `engine/nn/fused.rs` computing the same formula in the same order of
// operations; the parity tests compare the two (`PARITY_DEVICE=cuda:0`).
//
// Element types: `f` = float, `bf` = __nv_bfloat16 (arithmetic in float).
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, size_t i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void st(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, size_t i, float v) {
    p[i] = __float2bfloat16_rn(v);
}

#define GRID_STRIDE(i, n)                                                   \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (size_t)blockDim.x * gridDim.x)

// ---- GELU backward: dx = dy * gelu'(x) -----------------------------------

__device__ __forceinline__ float gelu_erf_grad(float x) {
    const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    const float pdf = expf(-0.5f * x * x) * 0.39894228040143268f;
    return cdf + x * pdf;
}

__device__ __forceinline__ float gelu_tanh_grad(float x) {
    const float c = 0.79788456080286536f;  // sqrt(2 / pi)
    const float x2 = x * x;
    const float t = tanhf(c * x * (1.0f + 0.044715f * x2));
    const float du = c * (1.0f + 3.0f * 0.044715f * x2);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

template <typename T>
__device__ void gelu_bwd(const T* x, const T* g, T* dx, size_t n, int tanh_form) {
    GRID_STRIDE(i, n) {
        const float v = ld(x, i);
        const float d = tanh_form ? gelu_tanh_grad(v) : gelu_erf_grad(v);
        st(dx, i, ld(g, i) * d);
    }
}

// ---- Warp and block sums -------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// Sum over a block of up to 1024 threads (a multiple of 32); every thread
// gets the total. `shared` holds 32 floats.
__device__ float block_sum(float v, float* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? shared[lane] : 0.0f;
    return warp_sum(v);
}

// ---- Layer norm backward (normalisation with gain w, one block a row) -----
// dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), gw = dy * w

template <typename T>
__device__ void layer_norm_bwd(const T* x, const T* g, const float* w, T* dx,
                               size_t rows, int n, float eps) {
    __shared__ float shared[32];
    for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        const T* gr = g + r * n;
        float s = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) s += ld(xr, j);
        const float mean = block_sum(s, shared) / n;
        float q = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            const float c = ld(xr, j) - mean;
            q += c * c;
        }
        const float rstd = rsqrtf(block_sum(q, shared) / n + eps);
        float sg = 0.0f, sgx = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            const float gw = ld(gr, j) * w[j];
            sg += gw;
            sgx += gw * (ld(xr, j) - mean) * rstd;
        }
        const float g_mean = block_sum(sg, shared) / n;
        const float gx_mean = block_sum(sgx, shared) / n;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            const float xhat = (ld(xr, j) - mean) * rstd;
            const float gw = ld(gr, j) * w[j];
            st(dx + r * n, j, rstd * (gw - g_mean - xhat * gx_mean));
        }
    }
}

// ---- Scaled, masked softmax (one warp a row) -------------------------------
// y = softmax(x * scale + mask); x rows are contiguous, the mask is read
// through 4 strides (0 where it is broadcast) over dims (d0, d1, d2, n).

template <typename T>
__device__ void masked_softmax(const T* x, const T* mask, T* y, size_t rows, int n,
                               int d1, int d2, long long m0, long long m1,
                               long long m2, long long mn, float scale) {
    const int lane = threadIdx.x & 31;
    const size_t warps = ((size_t)gridDim.x * blockDim.x) >> 5;
    for (size_t r = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows;
         r += warps) {
        const size_t i2 = r % d2, i1 = (r / d2) % d1, i0 = r / ((size_t)d2 * d1);
        const long long mbase = i0 * m0 + i1 * m1 + i2 * m2;
        const T* xr = x + r * n;
        float mx = -INFINITY;
        for (int j = lane; j < n; j += 32)
            mx = fmaxf(mx, ld(xr, j) * scale + ld(mask, mbase + j * mn));
        mx = warp_max(mx);
        float s = 0.0f;
        for (int j = lane; j < n; j += 32)
            s += expf(ld(xr, j) * scale + ld(mask, mbase + j * mn) - mx);
        s = warp_sum(s);
        const float inv = 1.0f / s;
        for (int j = lane; j < n; j += 32)
            st(y + r * n, j, expf(ld(xr, j) * scale + ld(mask, mbase + j * mn) - mx) * inv);
    }
}

// dx = scale * y * (dy - sum(dy * y)) (one warp a row)
template <typename T>
__device__ void softmax_bwd(const T* y, const T* g, T* dx, size_t rows, int n,
                            float scale) {
    const int lane = threadIdx.x & 31;
    const size_t warps = ((size_t)gridDim.x * blockDim.x) >> 5;
    for (size_t r = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows;
         r += warps) {
        const T* yr = y + r * n;
        const T* gr = g + r * n;
        float d = 0.0f;
        for (int j = lane; j < n; j += 32) d += ld(yr, j) * ld(gr, j);
        d = warp_sum(d);
        for (int j = lane; j < n; j += 32)
            st(dx + r * n, j, scale * ld(yr, j) * (ld(gr, j) - d));
    }
}

// ---- Dropout with a counter-based generator ---------------------------------
// Element i is kept when word 0 of Philox4x32-10(counter = (i, i >> 32, 0, 0),
// key = (seed, seed >> 32)) is below `threshold` (keep * 2^32); kept values
// are scaled by 1 / keep. The backward applies the same mask to dy, so no
// mask is stored.

__device__ __forceinline__ uint32_t philox_word0(uint64_t i, uint64_t seed) {
    uint32_t c0 = (uint32_t)i, c1 = (uint32_t)(i >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c0;
}

template <typename T>
__device__ void dropout(const T* x, T* y, size_t n, unsigned long long seed,
                        unsigned long long threshold, float scale) {
    GRID_STRIDE(i, n) {
        const bool keep = (unsigned long long)philox_word0(i, seed) < threshold;
        st(y, i, keep ? ld(x, i) * scale : 0.0f);
    }
}

// ---- The optimiser step over many f32 tensors (engine/train/fused_step.rs) --
// Tensors travel by pointer in a kernel argument, STEP_GROUP per launch;
// grid.y picks the tensor, grid.x strides over its elements. The scalar
// state `st` stays on the device between steps.

#define STEP_GROUP 48
#define ST_T 0        // updates applied
#define ST_SKIPPED 1  // steps skipped for a non-finite gradient norm
#define ST_NORM 2     // the last step's global norm (rescaled)
#define ST_FACTOR 3   // rescale times clip factor for the gradients
#define ST_APPLY 4    // 1 when the last step's norm was finite
#define ST_BC1 5      // 1 - beta1^t
#define ST_SBC2 6     // sqrt(1 - beta2^t)
#define ST_LR 7       // the step's learning rate

struct StepTensors {
    float* p[STEP_GROUP];
    const float* g[STEP_GROUP];
    float* m[STEP_GROUP];
    float* v[STEP_GROUP];
    unsigned long long n[STEP_GROUP];
    double lr_mult[STEP_GROUP];
    double wd[STEP_GROUP];
    int count;
};

// Partial sums of squares: partials[k * gridDim.x + blockIdx.x] for tensor k.
extern "C" __global__ void step_sumsq(const StepTensors t, float* partials) {
    __shared__ float shared[32];
    const int k = blockIdx.y;
    const float* g = t.g[k];
    float s = 0.0f;
    GRID_STRIDE(i, t.n[k]) {
        const float x = g[i];
        s += x * x;
    }
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partials[(size_t)k * gridDim.x + blockIdx.x] = s;
}

// x^n by squaring, as the CPU twin computes it (n >= 1).
__device__ double powi(double x, long long n) {
    double r = 1.0;
    while (true) {
        if (n & 1) r *= x;
        n >>= 1;
        if (n == 0) return r;
        x *= x;
    }
}

// One block: the global norm from `count` partial sums (in double), then
// the clip factor, the finite check and the bias corrections of the step.
extern "C" __global__ void step_finalize(const float* partials, size_t count, double* st,
                                         double rescale, double clip, double lr,
                                         double beta1, double beta2) {
    __shared__ double sums[256];
    double s = 0.0;
    for (size_t i = threadIdx.x; i < count; i += blockDim.x) s += (double)partials[i];
    sums[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) sums[threadIdx.x] += sums[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x != 0) return;
    const double norm = sqrt(sums[0]) * rescale;
    st[ST_NORM] = norm;
    if (!isfinite(norm)) {
        st[ST_SKIPPED] += 1.0;
        st[ST_APPLY] = 0.0;
        return;
    }
    const double clipped = (clip > 0.0 && norm > clip) ? clip / (norm + 1e-6) : 1.0;
    const double t = st[ST_T] + 1.0;
    st[ST_T] = t;
    st[ST_APPLY] = 1.0;
    st[ST_FACTOR] = rescale * clipped;
    st[ST_BC1] = 1.0 - powi(beta1, (long long)t);
    st[ST_SBC2] = sqrt(1.0 - powi(beta2, (long long)t));
    st[ST_LR] = lr;
}

// AdamW (decoupled decay, bias-corrected) on every tensor of the group, with
// the gradients scaled by the state's factor; nothing when the step was
// skipped.
extern "C" __global__ void step_adamw(const StepTensors t, const double* st, float b1,
                                      float b2, float eps) {
    if (st[ST_APPLY] == 0.0) return;
    const int k = blockIdx.y;
    const double lr = st[ST_LR] * t.lr_mult[k];
    const float step = (float)(lr / st[ST_BC1]);
    const float decay = (float)(1.0 - lr * t.wd[k]);
    const float sbc2 = (float)st[ST_SBC2];
    const float factor = (float)st[ST_FACTOR];
    float* p = t.p[k];
    const float* g = t.g[k];
    float* m = t.m[k];
    float* v = t.v[k];
    GRID_STRIDE(i, t.n[k]) {
        const float gi = g[i] * factor;
        const float mi = b1 * m[i] + (1.0f - b1) * gi;
        const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) / sbc2 + eps;
        p[i] = p[i] * decay - step * mi / denom;
    }
}

// ---- Entry points, one per element type --------------------------------------

#define ENTRIES(T, S)                                                                  \
    extern "C" __global__ void gelu_bwd_##S(const T* x, const T* g, T* dx, size_t n,   \
                                            int tanh_form) {                           \
        gelu_bwd(x, g, dx, n, tanh_form);                                              \
    }                                                                                  \
    extern "C" __global__ void layer_norm_bwd_##S(const T* x, const T* g,              \
                                                  const float* w, T* dx, size_t rows,  \
                                                  int n, float eps) {                  \
        layer_norm_bwd(x, g, w, dx, rows, n, eps);                                     \
    }                                                                                  \
    extern "C" __global__ void masked_softmax_##S(                                     \
        const T* x, const T* mask, T* y, size_t rows, int n, int d1, int d2,           \
        long long m0, long long m1, long long m2, long long mn, float scale) {         \
        masked_softmax(x, mask, y, rows, n, d1, d2, m0, m1, m2, mn, scale);            \
    }                                                                                  \
    extern "C" __global__ void softmax_bwd_##S(const T* y, const T* g, T* dx,          \
                                               size_t rows, int n, float scale) {      \
        softmax_bwd(y, g, dx, rows, n, scale);                                         \
    }                                                                                  \
    extern "C" __global__ void dropout_##S(const T* x, T* y, size_t n,                 \
                                           unsigned long long seed,                    \
                                           unsigned long long threshold, float scale) { \
        dropout(x, y, n, seed, threshold, scale);                                      \
    }

ENTRIES(float, f32)
ENTRIES(__nv_bfloat16, bf16)
