/*
 * Spatial shift CUDA kernel and its plain C launcher (see spatial_shift.h for the
 * semantics and spatial_shift_core.h for the indexing, which the host emulation in the
 * tests runs too).
 *
 * One pass over memory: every output element is written once with vector stores of up to
 * 16 bytes, and read once from its source (plus one cached neighbour per W-shifted
 * vector). Grid-stride loop over a single resident wave of blocks.
 */
#include "spatial_shift.h"
#include "spatial_shift_core.h"

#include <atomic>

#include <cuda_runtime.h>

namespace {

using autonad::shift::Params;

template <typename T, int V, typename Index>
__global__ void __launch_bounds__(autonad::shift::kBlockThreads)
    spatial_shift_kernel(const T* __restrict__ x, T* __restrict__ y, const Params p)
{
    const Index tid = static_cast<Index>(blockIdx.x) * static_cast<Index>(blockDim.x) + threadIdx.x;
    const Index nthreads = static_cast<Index>(gridDim.x) * static_cast<Index>(blockDim.x);
    autonad::shift::shift_thread<T, V, Index>(x, y, p, tid, nthreads);
}

// Resident blocks per SM of one kernel instantiation on `device`. The occupancy query
// costs a few microseconds, which matters for a plugin enqueued on every inference, so
// the answer is cached per device (lock-free; a race only repeats the query).
template <typename T, int V, typename Index>
cudaError_t blocks_per_sm(int device, int& blocks)
{
    constexpr int kCachedDevices = 64;
    static std::atomic<int> cache[kCachedDevices]{};  // constant-initialised to 0: no init guard
    const bool cacheable = device >= 0 && device < kCachedDevices;
    if (cacheable) {
        blocks = cache[device].load(std::memory_order_relaxed);
        if (blocks > 0) {
            return cudaSuccess;
        }
    }
    const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &blocks, spatial_shift_kernel<T, V, Index>, autonad::shift::kBlockThreads, 0);
    if (err != cudaSuccess) {
        return err;
    }
    if (blocks < 1) {
        blocks = 1;
    }
    if (cacheable) {
        cache[device].store(blocks, std::memory_order_relaxed);
    }
    return cudaSuccess;
}

}  // namespace

extern "C" int autonad_spatial_shift(const void* x, void* y, int n, int c, int h, int w, int pattern, int dtype,
                                     cudaStream_t stream)
{
    using namespace autonad::shift;

    Plan plan{};
    switch (make_plan(reinterpret_cast<uintptr_t>(x), reinterpret_cast<uintptr_t>(y), n, c, h, w, pattern, dtype,
                      plan)) {
    case PlanStatus::kInvalid: return static_cast<int>(cudaErrorInvalidValue);
    case PlanStatus::kEmpty: return static_cast<int>(cudaSuccess);
    case PlanStatus::kOk: break;
    }

    // Size the grid for the current device: the stream's context is the current one for
    // TensorRT's enqueue and for every caller of this launcher.
    int device = 0;
    int smCount = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) {
        err = cudaDeviceGetAttribute(&smCount, cudaDevAttrMultiProcessorCount, device);
    }
    if (err != cudaSuccess) {
        return static_cast<int>(err);
    }

    cudaError_t result = cudaErrorInvalidValue;  // overwritten by the one dispatch branch taken
    dispatch(plan, [&](auto typeTag, auto vecTag, auto indexTag) {
        using T = typename decltype(typeTag)::type;
        constexpr int V = decltype(vecTag)::value;
        using Index = typename decltype(indexTag)::type;
        int perSm = 0;
        result = blocks_per_sm<T, V, Index>(device, perSm);
        if (result != cudaSuccess) {
            return;
        }
        const dim3 grid(grid_blocks(plan.params.items, smCount, perSm));
        const dim3 block(kBlockThreads);
        const T* xt = static_cast<const T*>(x);
        T* yt = static_cast<T*>(y);
        Params params = plan.params;
        void* args[] = {&xt, &yt, &params};
        // cudaLaunchKernel returns this launch's own error, whereas `<<<>>>` followed by
        // cudaGetLastError could also report an unrelated earlier failure.
        result = cudaLaunchKernel(reinterpret_cast<const void*>(&spatial_shift_kernel<T, V, Index>), grid, block,
                                  args, 0, stream);
    });
    return static_cast<int>(result);
}
