/*
 * Spatial shift: the indexing core shared by the CUDA kernel and its host emulation.
 *
 * Everything here is __host__ __device__ (or plain C++ when not compiled by nvcc) so that
 * the exact code the kernel runs -- work decomposition, vector-width choice, border
 * handling, grid-stride loop -- can be executed and checked on a machine without a GPU
 * (tests/test_plugin_kernel.py does that). The kernel itself is a two-line wrapper in
 * spatial_shift.cu.
 *
 * Work decomposition: one work item = V consecutive output elements of one W-row. The
 * output is written exactly once, with V-wide (up to 16-byte) stores. Each item reads:
 *   - H-shift groups: the same V-wide span of the source row (a row copy; aligned), or
 *   - W-shift groups: the aligned V-wide span of its own row plus ONE neighbouring
 *     element (the one that crosses into the span), which the adjacent item loads as
 *     part of its own vector -- so it is an L1/L2 hit and DRAM traffic stays at one
 *     read + one write per element.
 * The data are copied as raw 16/32-bit words, never as floats, so the result is
 * bit-exact (NaN payloads, -0.0) for fp16 and fp32 alike.
 */
#ifndef AUTONAD_SPATIAL_SHIFT_CORE_H
#define AUTONAD_SPATIAL_SHIFT_CORE_H

#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define AUTONAD_HD __host__ __device__ __forceinline__
#else
#define AUTONAD_HD inline
#endif
#if defined(__CUDA_ARCH__)
#define AUTONAD_UNROLL _Pragma("unroll")
#else
#define AUTONAD_UNROLL  // host compilers unroll these small constant loops on their own
#endif

namespace autonad {
namespace shift {

constexpr int kBlockThreads = 256;
// Items each thread has in flight per loop trip: all loads are issued before any store,
// which keeps enough bytes in flight to saturate DRAM with one resident wave of blocks.
constexpr int kUnroll = 4;
// Upper bound on the grid so that `nthreads * kUnroll` (and thus the 32-bit loop index
// below) can never overflow; real grids are a few thousand blocks.
constexpr uint64_t kMaxBlocks = (uint64_t{1} << 30) / (uint64_t{kBlockThreads} * kUnroll);

// Unsigned division by a loop-invariant divisor with a multiply-high and a shift
// (Granlund-Montgomery, as in PyTorch's IntDivider). Exact for n < 2^31, 1 <= d < 2^31.
// Integer division is ~20+ instructions on a GPU; three of them per 16-byte item would
// make this memory-bound copy instruction-bound on fast-HBM parts.
struct FastDivmod {
    uint32_t divisor = 1;
    uint32_t multiplier = 0;
    uint32_t shift = 0;

    FastDivmod() = default;

    // Host-side construction; d must be in [1, 2^31).
    explicit FastDivmod(uint32_t d) : divisor(d)
    {
        while ((uint64_t{1} << shift) < d) {
            ++shift;
        }
        // (2^s - d) < d < 2^31, so the product fits in 63 bits and the quotient in 32.
        multiplier = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
    }

    AUTONAD_HD uint32_t div(uint32_t n) const
    {
#if defined(__CUDA_ARCH__)
        const uint32_t hi = __umulhi(n, multiplier);
#else
        const uint32_t hi = static_cast<uint32_t>((uint64_t{n} * multiplier) >> 32);
#endif
        return (hi + n) >> shift;  // hi <= n < 2^31: no overflow
    }
};

// q, r = n / d, n % d for the two index widths: fast path for 32-bit indices, plain
// 64-bit division for tensors with more than 2^31 - 1 work items.
AUTONAD_HD void divmod(uint32_t n, const FastDivmod& d, uint32_t& q, uint32_t& r)
{
    q = d.div(n);
    r = n - q * d.divisor;
}

AUTONAD_HD void divmod(uint64_t n, const FastDivmod& d, uint64_t& q, uint64_t& r)
{
    q = n / d.divisor;
    r = n - q * d.divisor;
}

// V elements of type T as one naturally aligned unit: a single LDG/STG of V*sizeof(T) bytes.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
    T v[V];
};

// Everything a thread needs besides the two pointers.
struct Params {
    uint64_t items;      // number of work items = N * C * H * (W / V)
    uint32_t W, H;       // spatial extent
    uint32_t b1, b2, b3; // channel-group boundaries floor(g*C/4), g = 1..3
    int32_t pattern;     // 1 or 2
    FastDivmod byRowVecs; // W / V
    FastDivmod byH;
    FastDivmod byC;
};

enum class PlanStatus { kOk, kEmpty, kInvalid };

struct Plan {
    Params params;
    int elemBytes;   // 2 (fp16) or 4 (fp32)
    int vec;         // V, elements per work item
    bool wideIndex;  // more than 2^31 - 1 items: use 64-bit indices
};

namespace detail {
// a * b, or false if it exceeds `limit`.
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t limit, uint64_t& out)
{
    if (a != 0 && b > limit / a) {
        return false;
    }
    out = a * b;
    return out <= limit;
}
}  // namespace detail

// Validate the arguments and choose the vector width. `x` and `y` are the buffer
// addresses (only their values are used: alignment and overlap).
inline PlanStatus make_plan(uintptr_t x, uintptr_t y, int64_t n, int64_t c, int64_t h, int64_t w, int pattern,
                            int dtype, Plan& plan)
{
    if ((pattern != 1 && pattern != 2) || (dtype != 0 && dtype != 1)) {
        return PlanStatus::kInvalid;
    }
    constexpr int64_t kDimMax = 0x7fffffff;  // every extent must fit FastDivmod's range
    if (n < 0 || c < 0 || h < 0 || w < 0 || n > kDimMax || c > kDimMax || h > kDimMax || w > kDimMax) {
        return PlanStatus::kInvalid;
    }
    if (n == 0 || c == 0 || h == 0 || w == 0) {
        return PlanStatus::kEmpty;
    }
    const int elemBytes = dtype == 0 ? 4 : 2;
    // Total bytes, capped well below 2^64 so pointer arithmetic below cannot wrap.
    constexpr uint64_t kMaxBytes = uint64_t{1} << 62;
    uint64_t count = 0;
    if (!detail::checked_mul(static_cast<uint64_t>(n), static_cast<uint64_t>(c), kMaxBytes, count) ||
        !detail::checked_mul(count, static_cast<uint64_t>(h), kMaxBytes, count) ||
        !detail::checked_mul(count, static_cast<uint64_t>(w), kMaxBytes, count)) {
        return PlanStatus::kInvalid;
    }
    uint64_t bytes = 0;
    if (!detail::checked_mul(count, static_cast<uint64_t>(elemBytes), kMaxBytes, bytes)) {
        return PlanStatus::kInvalid;
    }
    // Null, misaligned for the element type, or overlapping buffers.
    if (x == 0 || y == 0 || x % elemBytes != 0 || y % elemBytes != 0) {
        return PlanStatus::kInvalid;
    }
    if (x < y + bytes && y < x + bytes) {
        return PlanStatus::kInvalid;
    }
    // Widest vector (16 bytes down to one element) that divides the row and suits both
    // pointers' alignment; rows then start on vector boundaries because W % V == 0.
    int vec = 1;
    for (int v = 16 / elemBytes; v > 1; v /= 2) {
        const uint64_t vb = static_cast<uint64_t>(v) * elemBytes;
        if (w % v == 0 && x % vb == 0 && y % vb == 0) {
            vec = v;
            break;
        }
    }
    Params& p = plan.params;
    p.items = count / static_cast<uint64_t>(vec);
    p.W = static_cast<uint32_t>(w);
    p.H = static_cast<uint32_t>(h);
    p.b1 = static_cast<uint32_t>(c / 4);
    p.b2 = static_cast<uint32_t>(c / 2);
    p.b3 = static_cast<uint32_t>((3 * c) / 4);  // c < 2^31: no overflow in int64
    p.pattern = pattern;
    p.byRowVecs = FastDivmod(static_cast<uint32_t>(w / vec));
    p.byH = FastDivmod(static_cast<uint32_t>(h));
    p.byC = FastDivmod(static_cast<uint32_t>(c));
    plan.elemBytes = elemBytes;
    plan.vec = vec;
    plan.wideIndex = p.items > 0x7fffffffull;
    return PlanStatus::kOk;
}

// Blocks for a grid-stride launch: enough for every thread to have kUnroll items, at
// most one resident wave (`blocksPerSm` from the occupancy calculator), since more
// blocks than fit at once only add a tail for a pure copy.
inline unsigned grid_blocks(uint64_t items, int smCount, int blocksPerSm)
{
    const uint64_t perBlock = uint64_t{kBlockThreads} * kUnroll;
    const uint64_t needed = (items + perBlock - 1) / perBlock;
    uint64_t resident = static_cast<uint64_t>(smCount > 0 ? smCount : 1) *
                        static_cast<uint64_t>(blocksPerSm > 0 ? blocksPerSm : 1);
    if (resident > kMaxBlocks) {
        resident = kMaxBlocks;
    }
    const uint64_t blocks = needed < resident ? needed : resident;
    return static_cast<unsigned>(blocks > 0 ? blocks : 1);
}

// Compute work item `item`: its output vector and the element offset to store it at.
template <typename T, int V, typename Index>
AUTONAD_HD void shift_item(const T* __restrict__ x, const Params& p, Index item, Vec<T, V>& out, uint64_t& dst)
{
    Index row, wv, nc, h, nq, c;
    divmod(item, p.byRowVecs, row, wv);  // row = (n*C + c)*H + h
    divmod(row, p.byH, nc, h);
    divmod(nc, p.byC, nq, c);
    (void)nq;
    const uint32_t ch = static_cast<uint32_t>(c);
    // Index of the group whose [b_g, b_{g+1}) holds ch; empty groups are skipped naturally.
    const int g = int(ch >= p.b1) + int(ch >= p.b2) + int(ch >= p.b3);
    const bool alongH = (p.pattern == 1) ? (g < 2) : (g >= 2);
    const bool forward = (g & 1) == 0;  // down (H) or right (W): y[i] = x[i-1]
    const uint64_t rowBase = static_cast<uint64_t>(row) * p.W;
    const uint32_t w0 = static_cast<uint32_t>(wv) * V;
    dst = rowBase + w0;

    if (alongH) {
        // Whole-row copy from the clamped neighbouring row; the border row keeps itself.
        const uint32_t hh = static_cast<uint32_t>(h);
        const uint32_t hs = forward ? (hh > 0 ? hh - 1 : 0) : (hh + 1 < p.H ? hh + 1 : hh);
        const uint64_t src = (static_cast<uint64_t>(row) - hh + hs) * p.W + w0;
        out = *reinterpret_cast<const Vec<T, V>*>(x + src);
        return;
    }
    if constexpr (V == 1) {
        const uint32_t ws = forward ? (w0 > 0 ? w0 - 1 : 0) : (w0 + 1 < p.W ? w0 + 1 : w0);
        out.v[0] = x[rowBase + ws];
    } else {
        // Aligned load of the span itself plus the one element that crosses into it.
        const Vec<T, V> span = *reinterpret_cast<const Vec<T, V>*>(x + rowBase + w0);
        if (forward) {
            out.v[0] = w0 > 0 ? x[rowBase + w0 - 1] : span.v[0];
            AUTONAD_UNROLL
            for (int k = 1; k < V; ++k) {
                out.v[k] = span.v[k - 1];
            }
        } else {
            AUTONAD_UNROLL
            for (int k = 0; k + 1 < V; ++k) {
                out.v[k] = span.v[k + 1];
            }
            out.v[V - 1] = w0 + V < p.W ? x[rowBase + w0 + V] : span.v[V - 1];
        }
    }
}

// One thread's share of a grid-stride launch with `nthreads` threads in total.
template <typename T, int V, typename Index>
AUTONAD_HD void shift_thread(const T* __restrict__ x, T* __restrict__ y, const Params& p, Index tid, Index nthreads)
{
    const Index items = static_cast<Index>(p.items);
    const Index step = nthreads * static_cast<Index>(kUnroll);
    for (Index base = tid; base < items; base += step) {
        Vec<T, V> out[kUnroll] = {};
        uint64_t dst[kUnroll] = {};
        AUTONAD_UNROLL
        for (int k = 0; k < kUnroll; ++k) {
            const Index item = base + static_cast<Index>(k) * nthreads;
            if (item < items) {
                shift_item<T, V, Index>(x, p, item, out[k], dst[k]);
            }
        }
        AUTONAD_UNROLL
        for (int k = 0; k < kUnroll; ++k) {
            if (base + static_cast<Index>(k) * nthreads < items) {
                *reinterpret_cast<Vec<T, V>*>(y + dst[k]) = out[k];
            }
        }
    }
}

template <typename T>
struct TypeTag {
    using type = T;
};

// Call f(TypeTag<T>, integral_constant<V>, TypeTag<Index>) for the plan's instantiation.
// The launcher and the host emulation both go through here, so they run the same code.
template <typename F>
void dispatch(const Plan& plan, F&& f)
{
    auto withIndex = [&](auto t, auto v) {
        if (plan.wideIndex) {
            f(t, v, TypeTag<uint64_t>{});
        } else {
            f(t, v, TypeTag<uint32_t>{});
        }
    };
    if (plan.elemBytes == 4) {
        switch (plan.vec) {
        case 4: withIndex(TypeTag<uint32_t>{}, std::integral_constant<int, 4>{}); break;
        case 2: withIndex(TypeTag<uint32_t>{}, std::integral_constant<int, 2>{}); break;
        default: withIndex(TypeTag<uint32_t>{}, std::integral_constant<int, 1>{}); break;
        }
    } else {
        switch (plan.vec) {
        case 8: withIndex(TypeTag<uint16_t>{}, std::integral_constant<int, 8>{}); break;
        case 4: withIndex(TypeTag<uint16_t>{}, std::integral_constant<int, 4>{}); break;
        case 2: withIndex(TypeTag<uint16_t>{}, std::integral_constant<int, 2>{}); break;
        default: withIndex(TypeTag<uint16_t>{}, std::integral_constant<int, 1>{}); break;
        }
    }
}

}  // namespace shift
}  // namespace autonad

#endif  // AUTONAD_SPATIAL_SHIFT_CORE_H
