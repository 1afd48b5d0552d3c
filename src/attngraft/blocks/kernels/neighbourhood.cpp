// attngraft: fused k×k neighbourhood attention on the CPU (forward and backward), called through ctypes.
//
// For every query pixel (y, x) of every (batch, head) plane, over the neighbours (y + a − r, x + b − r) that lie
// inside the image (r = k / 2):
//
//     s_ab = q · k_ab + q[:Dr] · row_embedding[a] + q[Dq − Dc:] · col_embedding[b] + offset_bias[a·k + b]
//     out = Σ_ab softmax_ab(s) v_ab,        lse = log Σ_ab exp(s_ab)
//
// (SASA's 2-D relative embeddings are the row and column embeddings, each on half of the query's channels; the
// relation layer's geometric prior is the offset bias.) Layout: channels first, as the 1×1 projections produce
// them. q, k are (B, heads, Dq, H, W), v (B, heads, Dv, H, W), each contiguous within a batch item, with its own
// batch stride (so q, k and v may be views of one packed projection); out and grad_out (B, heads, Dv, H, W) and
// lse (B, heads, H, W) are contiguous; embeddings are (heads, k, Dr) and (heads, k, Dc), the offset bias (heads, k²).
//
// One thread owns whole (batch, head) planes, so nothing needs atomics. A plane is copied into zero-padded scratch
// rows first; queries are then processed in tiles of TILE consecutive pixels of a row, every tile a vector
// register: the k×k offsets become shifted loads, the softmax runs over offsets lane by lane (vertical max, exp
// and sum), and the multiply-adds of up to 8 neighbours or channels run as independent register chains. The
// backward recomputes the probabilities from the saved log-sum-exp (as flash attention does): pass 1 over query
// tiles gives dL/dlogits and the query gradient; pass 2 over key tiles gathers the key and value gradients from
// the queries whose windows hold each key, so no scattered writes are needed.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

// Queries per tile, one vector register of floats: 16 with AVX-512, 8 with AVX2, 4 otherwise (set by the build).
#ifndef ATTNGRAFT_TILE
#define ATTNGRAFT_TILE 4
#endif

extern "C" {
// One call's tensors and sizes (all fields 8 bytes, mirrored by a ctypes.Structure in native.py).
struct Call {
  const void *query, *key, *value, *row_embedding, *col_embedding, *offset_bias;  // embeddings/bias may be null
  int64_t query_stride, key_stride, value_stride;                                 // elements between batch items
  int64_t batch, heads, query_dim, value_dim, row_dim, col_dim, height, width, kernel, threads;
  void *out, *lse;       // forward's outputs, backward's inputs
  const void* grad_out;  // backward only, from here on
  void *grad_query, *grad_key, *grad_value;
  int64_t grad_query_stride, grad_key_stride, grad_value_stride;
  void *grad_row_embedding, *grad_col_embedding, *grad_offset_bias;  // per plane: (B·heads, k, Dr | Dc | k)
};
}

namespace {

constexpr int64_t TILE = ATTNGRAFT_TILE;

// TILE lanes of S as one GCC/Clang vector.
template <typename S>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float type __attribute__((vector_size(TILE * sizeof(float))));
  typedef int32_t bits __attribute__((vector_size(TILE * sizeof(int32_t))));
};
template <>
struct Lanes<double> {
  typedef double type __attribute__((vector_size(TILE * sizeof(double))));
};

template <typename S>
using V = typename Lanes<S>::type;

template <typename S>
inline V<S> load(const S* source) {
  V<S> value;
  std::memcpy(&value, source, sizeof value);
  return value;
}

template <typename S>
inline void store(S* target, V<S> value) {
  std::memcpy(target, &value, sizeof value);
}

// The first `lanes` lanes of a tile (the last tile of a row may stick out of the image).
template <typename S>
inline void store_lanes(S* target, V<S> value, int64_t lanes) {
  if (lanes == TILE) {
    store(target, value);
  } else {
    for (int64_t lane = 0; lane < lanes; ++lane) target[lane] = value[lane];
  }
}

template <typename S>
inline V<S> splat(S value) {
  return V<S>{} + value;
}

template <typename S>
inline S lane_sum(V<S> value) {
  S sum = 0;
  for (int64_t lane = 0; lane < TILE; ++lane) sum += value[lane];
  return sum;
}

#if defined(__AVX512F__) && ATTNGRAFT_TILE == 16
// exp of each lane, as below, with AVX-512's rounding and 2^n scaling instructions (fewer instructions).
inline V<float> exp_lanes(V<float> lanes) {
  __m512 x;
  std::memcpy(&x, &lanes, sizeof x);
  const __m512 clamped = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(clamped, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), clamped);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __mmask16 inside = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
  const __m512 result = _mm512_maskz_scalef_ps(inside, p, n);
  V<float> out;
  std::memcpy(&out, &result, sizeof out);
  return out;
}
#else
// exp of each lane (Cephes' expf: a polynomial on the reduced argument, scaled by 2^n through the exponent bits;
// relative error ~1e-7). Lanes below −87 (−inf included) give exactly 0.
inline V<float> exp_lanes(V<float> x) {
  using Bits = Lanes<float>::bits;
  const V<float> clamped = x < -87.0f ? splat(-87.0f) : x;
  const V<float> scaled = clamped * 1.44269504088896341f + 0.5f;
  const Bits truncated = __builtin_convertvector(scaled, Bits);
  const Bits floored = truncated + (scaled < __builtin_convertvector(truncated, V<float>));  // true is −1
  const V<float> n = __builtin_convertvector(floored, V<float>);
  const V<float> r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  V<float> p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Bits exponent = (floored + 127) << 23;
  V<float> scale;
  std::memcpy(&scale, &exponent, sizeof scale);
  return x < -87.0f ? splat(0.0f) : p * scale;
}
#endif

inline V<double> exp_lanes(V<double> x) {
  for (int64_t lane = 0; lane < TILE; ++lane) x[lane] = std::exp(x[lane]);  // exp(−inf) = 0
  return x;
}

struct Dims {
  int64_t heads, query_dim, value_dim, row_dim, col_dim, height, width, kernel;
  explicit Dims(const Call& c)
      : heads(c.heads), query_dim(c.query_dim), value_dim(c.value_dim), row_dim(c.row_embedding ? c.row_dim : 0),
        col_dim(c.col_embedding ? c.col_dim : 0), height(c.height), width(c.width), kernel(c.kernel) {}
  int64_t radius() const { return kernel / 2; }
  int64_t taps() const { return kernel * kernel; }
  int64_t tiled() const { return (width + TILE - 1) / TILE * TILE; }  // a row rounded up to whole tiles
  int64_t padded() const { return tiled() + 2 * radius(); }           // ... plus the window radius on both sides
  int64_t channel() const { return height * padded(); }               // one channel of padded rows
  int64_t pixels() const { return height * width; }
  int64_t first_row(int64_t y) const { return std::max<int64_t>(0, radius() - y); }  // window rows inside
  int64_t last_row(int64_t y) const { return std::min(kernel, height + radius() - y); }
  int64_t col_offset() const { return query_dim - col_dim; }  // first query channel of the column embedding
};

// The window rows [first, last) a tile's taps come from; tap (a, b) is a·k + b.
struct Taps {
  int64_t first_row, last_row, kernel;
  int64_t first() const { return first_row * kernel; }
  int64_t last() const { return last_row * kernel; }
};

inline Taps taps_inside(int64_t y, const Dims& d) { return {d.first_row(y), d.last_row(y), d.kernel}; }

// Plane n = (batch item n / heads, head n % heads) of a tensor with the given batch stride.
template <typename T>
inline T* plane(T* base, int64_t stride, int64_t n, int64_t per_head, const Dims& d) {
  return base + (n / d.heads) * stride + (n % d.heads) * per_head;
}

// Copies channels × H × W into rows of length d.padded() starting at column r. The other columns are never
// written, so they keep the zeros the scratch was created with.
template <typename S>
void pad_rows(const S* source, S* target, int64_t channels, const Dims& d) {
  for (int64_t c = 0; c < channels * d.height; ++c) {
    std::copy(source + c * d.width, source + (c + 1) * d.width, target + c * d.padded() + d.radius());
  }
}

// Per-thread scratch, created zeroed: one plane's padded inputs, a tile's logits (then probabilities, then logit gradients), its
// column mask and relative terms; for the backward, the plane's probabilities and logit gradients and the
// gradient accumulators of the embeddings and the offset bias.
template <typename S>
struct Scratch {
  std::vector<S> query, key, value, logits, mask, row_terms, col_terms;
  std::vector<S> grad_out, delta, plane_probabilities, plane_grad_logits, row_sums, col_sums;
  std::vector<S> grad_row_embedding, grad_col_embedding, grad_offset_bias;
  Scratch(const Dims& d, bool backward)
      : query(d.query_dim * d.channel()), key(d.query_dim * d.channel()), value(d.value_dim * d.channel()),
        logits(d.taps() * TILE), mask(d.kernel * TILE), row_terms(d.kernel * TILE), col_terms(d.kernel * TILE) {
    if (!backward) return;
    grad_out.resize(d.value_dim * d.channel());
    delta.resize(d.height * d.tiled());
    plane_probabilities.resize(d.taps() * d.channel());
    plane_grad_logits.resize(d.taps() * d.channel());
    row_sums.resize(d.kernel * TILE);
    col_sums.resize(d.kernel * TILE);
    grad_row_embedding.resize(d.kernel * d.row_dim * TILE);
    grad_col_embedding.resize(d.kernel * d.col_dim * TILE);
    grad_offset_bias.resize(d.taps() * TILE);
  }
};

// Calls body(group, start) for consecutive groups of at most 8 items covering [0, count), with the group's size as
// a compile-time constant: the group's accumulators then live in registers, and their chains of multiply-adds are
// independent, so they overlap instead of waiting on one another's latency.
template <typename Body>
inline void in_groups(int64_t count, Body body) {
  int64_t start = 0;
  for (; start + 8 <= count; start += 8) body(std::integral_constant<int, 8>{}, start);
  switch (count - start) {
    case 7: body(std::integral_constant<int, 7>{}, start); break;
    case 6: body(std::integral_constant<int, 6>{}, start); break;
    case 5: body(std::integral_constant<int, 5>{}, start); break;
    case 4: body(std::integral_constant<int, 4>{}, start); break;
    case 3: body(std::integral_constant<int, 3>{}, start); break;
    case 2: body(std::integral_constant<int, 2>{}, start); break;
    case 1: body(std::integral_constant<int, 1>{}, start); break;
    default: break;
  }
}

// acc[j] += Σ_c lhs_c · rhs_c[j] for j < G: one tile's dot products with G neighbours one column apart (channel c's
// rows are `stride` apart).
template <int G, typename S>
inline void shifted_dots(const S* lhs, const S* rhs, int64_t stride, int64_t channels, V<S>* acc) {
  for (int64_t c = 0; c < channels; ++c) {
    const V<S> left = load(lhs + c * stride);
    for (int j = 0; j < G; ++j) acc[j] += left * load(rhs + c * stride + j);
  }
}

// acc[j] += Σ_(a, b) weight(a·k + b, a, b) · source(a, b)[j · stride] for j < G: G channels of a weighted sum over
// the taps (row and column passed apart: no division in the loop).
template <int G, typename S, typename Weight, typename Source>
inline void weighted_channels(Taps taps, Weight weight, Source source, int64_t stride, V<S>* acc) {
  for (int64_t a = taps.first_row; a < taps.last_row; ++a) {
    for (int64_t b = 0; b < taps.kernel; ++b) {
      const V<S> w = weight(a * taps.kernel + b, a, b);
      const S* base = source(a, b);
      for (int j = 0; j < G; ++j) acc[j] += w * load(base + j * stride);
    }
  }
}

// terms[i] = Σ_c query_c · embedding[i][c] for the k rows (or columns) i of a window: (k, dim) embedding.
template <typename S>
void embedding_terms(const S* query, const S* embedding, int64_t dim, const Dims& d, S* terms) {
  in_groups(d.kernel, [&](auto group, int64_t i0) {
    constexpr int G = decltype(group)::value;
    V<S> acc[G] = {};
    for (int64_t c = 0; c < dim; ++c) {
      const V<S> q = load(query + c * d.channel());
      for (int j = 0; j < G; ++j) acc[j] += q * embedding[(i0 + j) * dim + c];
    }
    for (int j = 0; j < G; ++j) store(terms + (i0 + j) * TILE, acc[j]);
  });
}

// The inputs of one plane, and its head's embeddings.
template <typename S>
struct PlaneInputs {
  const S *row_embedding, *col_embedding, *offset_bias;
};

template <typename S>
PlaneInputs<S> load_plane(const Call& call, int64_t n, const Dims& d, Scratch<S>& s) {
  const int64_t head = n % d.heads;
  pad_rows(plane(static_cast<const S*>(call.query), call.query_stride, n, d.query_dim * d.pixels(), d),
           s.query.data(), d.query_dim, d);
  pad_rows(plane(static_cast<const S*>(call.key), call.key_stride, n, d.query_dim * d.pixels(), d), s.key.data(),
           d.query_dim, d);
  pad_rows(plane(static_cast<const S*>(call.value), call.value_stride, n, d.value_dim * d.pixels(), d),
           s.value.data(), d.value_dim, d);
  auto of_head = [&](const void* tensor, int64_t size) {
    return tensor ? static_cast<const S*>(tensor) + head * size : nullptr;
  };
  return {of_head(call.row_embedding, d.kernel * d.row_dim), of_head(call.col_embedding, d.kernel * d.col_dim),
          of_head(call.offset_bias, d.taps())};
}

// mask[b][lane]: 0 where neighbour column x + b − r of the lane's pixel x = x0 + lane lies in the image (and the
// lane itself does), −inf elsewhere.
template <typename S>
void column_mask(int64_t x0, const Dims& d, S* mask) {
  const S outside = -std::numeric_limits<S>::infinity();
  for (int64_t b = 0; b < d.kernel; ++b) {
    for (int64_t lane = 0; lane < TILE; ++lane) {
      const int64_t x = x0 + lane, column = x + b - d.radius();
      mask[b * TILE + lane] = (x < d.width && column >= 0 && column < d.width) ? S(0) : outside;
    }
  }
}

// Logits of the tile (y, x0..x0+TILE) for the in-image window rows: logits[(a·k + b)·TILE + lane]. Returns the
// per-lane maximum (0 for lanes with no neighbour, so exp(−inf − 0) = 0 there).
template <typename S>
V<S> tile_logits(const PlaneInputs<S>& in, int64_t y, int64_t x0, const Dims& d, Scratch<S>& s) {
  const S* query = s.query.data() + y * d.padded() + x0 + d.radius();
  if (in.row_embedding) embedding_terms(query, in.row_embedding, d.row_dim, d, s.row_terms.data());
  if (in.col_embedding) {
    embedding_terms(query + d.col_offset() * d.channel(), in.col_embedding, d.col_dim, d, s.col_terms.data());
  }
  V<S> peak = splat(-std::numeric_limits<S>::infinity());
  for (int64_t a = d.first_row(y); a < d.last_row(y); ++a) {
    const S* key = s.key.data() + (y + a - d.radius()) * d.padded() + x0;
    const V<S> row = in.row_embedding ? load(s.row_terms.data() + a * TILE) : V<S>{};
    in_groups(d.kernel, [&](auto group, int64_t b0) {
      constexpr int G = decltype(group)::value;
      V<S> acc[G];
      for (int j = 0; j < G; ++j) {
        const int64_t b = b0 + j;
        acc[j] = load(s.mask.data() + b * TILE) + row + (in.offset_bias ? in.offset_bias[a * d.kernel + b] : S(0));
        if (in.col_embedding) acc[j] += load(s.col_terms.data() + b * TILE);
      }
      shifted_dots<G>(query, key + b0, d.channel(), d.query_dim, acc);
      for (int j = 0; j < G; ++j) {
        store(s.logits.data() + (a * d.kernel + b0 + j) * TILE, acc[j]);
        peak = peak > acc[j] ? peak : acc[j];
      }
    });
  }
  return peak == -std::numeric_limits<S>::infinity() ? V<S>{} : peak;
}

template <typename S>
void forward_plane(const Call& call, int64_t n, const Dims& d, Scratch<S>& s) {
  const PlaneInputs<S> in = load_plane(call, n, d, s);
  S* out = static_cast<S*>(call.out) + n * d.value_dim * d.pixels();
  S* lse = call.lse ? static_cast<S*>(call.lse) + n * d.pixels() : nullptr;
  for (int64_t x0 = 0; x0 < d.width; x0 += TILE) {
    column_mask(x0, d, s.mask.data());
    const int64_t lanes = std::min(TILE, d.width - x0);
    for (int64_t y = 0; y < d.height; ++y) {
      const V<S> peak = tile_logits(in, y, x0, d, s);
      const Taps taps = taps_inside(y, d);
      V<S> total{};
      for (int64_t tap = taps.first(); tap < taps.last(); ++tap) {
        const V<S> p = exp_lanes(load(s.logits.data() + tap * TILE) - peak);
        store(s.logits.data() + tap * TILE, p);
        total += p;
      }
      const V<S> inverse = S(1) / total;
      const S* value = s.value.data() + (y - d.radius()) * d.padded() + x0;  // + the tap's row and column below
      in_groups(d.value_dim, [&](auto group, int64_t c0) {
        constexpr int G = decltype(group)::value;
        V<S> acc[G] = {};
        weighted_channels<G, S>(
            taps, [&](int64_t tap, int64_t, int64_t) { return load(s.logits.data() + tap * TILE); },
            [&](int64_t a, int64_t b) { return value + c0 * d.channel() + a * d.padded() + b; }, d.channel(), acc);
        for (int j = 0; j < G; ++j) store_lanes(out + ((c0 + j) * d.height + y) * d.width + x0, acc[j] * inverse, lanes);
      });
      for (int64_t lane = 0; lane < lanes && lse; ++lane) lse[y * d.width + x0 + lane] = peak[lane] + std::log(total[lane]);
    }
  }
}

// delta = Σ_c grad_out · out per pixel, the softmax backward's correction term.
template <typename S>
void output_dots(const S* out, const Dims& d, Scratch<S>& s) {
  std::fill(s.delta.begin(), s.delta.end(), S(0));
  for (int64_t c = 0; c < d.value_dim; ++c) {
    for (int64_t y = 0; y < d.height; ++y) {
      const S* grad_out = s.grad_out.data() + c * d.channel() + y * d.padded() + d.radius();
      const S* output = out + (c * d.height + y) * d.width;
      for (int64_t x = 0; x < d.width; ++x) s.delta[y * d.tiled() + x] += grad_out[x] * output[x];
    }
  }
}

// The relative terms' share of the query gradient (acc, channel c) and the embeddings' gradients (accumulated per
// lane in the scratch, summed over lanes at the end of the plane).
template <typename S>
inline V<S> relative_grad(const PlaneInputs<S>& in, int64_t c, V<S> query, const Dims& d, Scratch<S>& s) {
  V<S> grad{};
  if (in.row_embedding && c < d.row_dim) {
    for (int64_t a = 0; a < d.kernel; ++a) {
      const V<S> sum = load(s.row_sums.data() + a * TILE);
      grad += sum * in.row_embedding[a * d.row_dim + c];
      S* acc = s.grad_row_embedding.data() + (a * d.row_dim + c) * TILE;
      store(acc, load(acc) + sum * query);
    }
  }
  if (in.col_embedding && c >= d.col_offset()) {
    const int64_t i = c - d.col_offset();
    for (int64_t b = 0; b < d.kernel; ++b) {
      const V<S> sum = load(s.col_sums.data() + b * TILE);
      grad += sum * in.col_embedding[b * d.col_dim + i];
      S* acc = s.grad_col_embedding.data() + (b * d.col_dim + i) * TILE;
      store(acc, load(acc) + sum * query);
    }
  }
  return grad;
}

// Backward pass 1, over query tiles: probabilities from the saved log-sum-exp, dL/dlogits (kept in the tile's
// logits buffer and, with the probabilities, in plane-wide padded buffers for pass 2), the query gradient (a
// gather over the window, plus the relative terms) and the embedding and offset-bias gradients.
template <typename S>
void query_tile_backward(const PlaneInputs<S>& in, const S* lse, S* grad_query, int64_t y, int64_t x0,
                         int64_t lanes, const Dims& d, Scratch<S>& s) {
  tile_logits(in, y, x0, d, s);
  V<S> normaliser{};
  for (int64_t lane = 0; lane < lanes; ++lane) normaliser[lane] = lse[y * d.width + x0 + lane];
  const V<S> delta = load(s.delta.data() + y * d.tiled() + x0);
  const Taps taps = taps_inside(y, d);
  const int64_t here = y * d.padded() + x0 + d.radius();
  std::fill(s.row_sums.begin(), s.row_sums.end(), S(0));
  std::fill(s.col_sums.begin(), s.col_sums.end(), S(0));
  for (int64_t a = d.first_row(y); a < d.last_row(y); ++a) {
    const S* value = s.value.data() + (y + a - d.radius()) * d.padded() + x0;
    in_groups(d.kernel, [&](auto group, int64_t b0) {
      constexpr int G = decltype(group)::value;
      V<S> dp[G] = {};
      shifted_dots<G>(s.grad_out.data() + here, value + b0, d.channel(), d.value_dim, dp);
      V<S> row_sum{};
      for (int j = 0; j < G; ++j) {
        const int64_t tap = a * d.kernel + b0 + j;
        const V<S> p = exp_lanes(load(s.logits.data() + tap * TILE) - normaliser);
        const V<S> ds = p * (dp[j] - delta);
        store(s.logits.data() + tap * TILE, ds);
        store(s.plane_probabilities.data() + tap * d.channel() + here, p);
        store(s.plane_grad_logits.data() + tap * d.channel() + here, ds);
        row_sum += ds;
        S* col = s.col_sums.data() + (b0 + j) * TILE;
        store(col, load(col) + ds);
        if (in.offset_bias) {
          S* offset = s.grad_offset_bias.data() + tap * TILE;
          store(offset, load(offset) + ds);
        }
      }
      store(s.row_sums.data() + a * TILE, load(s.row_sums.data() + a * TILE) + row_sum);
    });
  }
  const S* key = s.key.data() + (y - d.radius()) * d.padded() + x0;
  const S* query = s.query.data() + here;
  in_groups(d.query_dim, [&](auto group, int64_t c0) {
    constexpr int G = decltype(group)::value;
    V<S> acc[G] = {};
    weighted_channels<G, S>(
        taps, [&](int64_t tap, int64_t, int64_t) { return load(s.logits.data() + tap * TILE); },
        [&](int64_t a, int64_t b) { return key + c0 * d.channel() + a * d.padded() + b; }, d.channel(), acc);
    for (int j = 0; j < G; ++j) {
      const int64_t c = c0 + j;
      acc[j] += relative_grad(in, c, load(query + c * d.channel()), d, s);
      store_lanes(grad_query + (c * d.height + y) * d.width + x0, acc[j], lanes);
    }
  });
}

// Backward pass 2, over key tiles: each key pixel gathers from the queries whose window holds it (the query at
// the mirrored offset): grad_key = Σ ds · q and grad_value = Σ p · grad_out, accumulated in registers.
template <typename S>
void key_tile_backward(int64_t row, int64_t x0, int64_t lanes, const Dims& d, Scratch<S>& s, S* grad_key,
                       S* grad_value) {
  // Taps (a, b) whose query row y = row − a + r lies in the image.
  const Taps taps{std::max<int64_t>(0, row + d.radius() - d.height + 1), std::min(d.kernel, row + d.radius() + 1),
                  d.kernel};
  // The query (y, x) = (row − a + r, column − b + r) sits at padded column x + r.
  auto at = [&](int64_t a, int64_t b) { return (row - a + d.radius()) * d.padded() + x0 + 2 * d.radius() - b; };
  auto gather = [&](const std::vector<S>& weights, const std::vector<S>& source, int64_t channels, S* target) {
    in_groups(channels, [&](auto group, int64_t c0) {
      constexpr int G = decltype(group)::value;
      V<S> acc[G] = {};
      weighted_channels<G, S>(
          taps, [&](int64_t tap, int64_t a, int64_t b) { return load(weights.data() + tap * d.channel() + at(a, b)); },
          [&](int64_t a, int64_t b) { return source.data() + c0 * d.channel() + at(a, b); }, d.channel(), acc);
      for (int j = 0; j < G; ++j) store_lanes(target + ((c0 + j) * d.height + row) * d.width + x0, acc[j], lanes);
    });
  };
  gather(s.plane_grad_logits, s.query, d.query_dim, grad_key);
  gather(s.plane_probabilities, s.grad_out, d.value_dim, grad_value);
}

// Sums the per-lane accumulators into one plane's (count,) output.
template <typename S>
void reduce_lanes(const std::vector<S>& lanes, int64_t count, void* target, int64_t n) {
  if (!target) return;
  S* out = static_cast<S*>(target) + n * count;
  for (int64_t i = 0; i < count; ++i) out[i] = lane_sum<S>(load(lanes.data() + i * TILE));
}

template <typename S>
void backward_plane(const Call& call, int64_t n, const Dims& d, Scratch<S>& s) {
  const PlaneInputs<S> in = load_plane(call, n, d, s);
  const int64_t values = d.value_dim * d.pixels(), queries = d.query_dim * d.pixels();
  pad_rows(static_cast<const S*>(call.grad_out) + n * values, s.grad_out.data(), d.value_dim, d);
  output_dots(static_cast<const S*>(call.out) + n * values, d, s);
  // (The plane buffers need no clearing: pass 1 rewrites every entry pass 2 reads but the padding columns, which
  // stay zero from the scratch's creation.)
  for (auto* buffer : {&s.grad_row_embedding, &s.grad_col_embedding, &s.grad_offset_bias}) {
    std::fill(buffer->begin(), buffer->end(), S(0));
  }
  const S* lse = static_cast<const S*>(call.lse) + n * d.pixels();
  S* grad_query = plane(static_cast<S*>(call.grad_query), call.grad_query_stride, n, queries, d);
  for (int64_t x0 = 0; x0 < d.width; x0 += TILE) {
    column_mask(x0, d, s.mask.data());
    const int64_t lanes = std::min(TILE, d.width - x0);
    for (int64_t y = 0; y < d.height; ++y) query_tile_backward(in, lse, grad_query, y, x0, lanes, d, s);
  }
  S* grad_key = plane(static_cast<S*>(call.grad_key), call.grad_key_stride, n, queries, d);
  S* grad_value = plane(static_cast<S*>(call.grad_value), call.grad_value_stride, n, values, d);
  for (int64_t x0 = 0; x0 < d.width; x0 += TILE) {
    const int64_t lanes = std::min(TILE, d.width - x0);
    for (int64_t row = 0; row < d.height; ++row) key_tile_backward(row, x0, lanes, d, s, grad_key, grad_value);
  }
  reduce_lanes(s.grad_row_embedding, d.kernel * d.row_dim, call.grad_row_embedding, n);
  reduce_lanes(s.grad_col_embedding, d.kernel * d.col_dim, call.grad_col_embedding, n);
  reduce_lanes(s.grad_offset_bias, d.taps(), call.grad_offset_bias, n);
}

// Flushes subnormal floats to zero on this thread while alive (x86: the FTZ and DAZ bits of MXCSR). Tiny
// probabilities times tiny gradients are subnormal, and arithmetic on them is ~100× slower: a trained network's
// backward ran 4× slower without this. Values below 1.2e-38 (float) count as zero, far below any tolerance.
struct FlushSubnormals {
#if defined(__x86_64__) || defined(__i386__)
  unsigned saved = _mm_getcsr();
  FlushSubnormals() { _mm_setcsr(saved | 0x8040); }
  ~FlushSubnormals() { _mm_setcsr(saved); }
#endif
};

// Runs work(n, scratch) over the B · heads planes on `threads` threads, each thread owning a contiguous range of
// planes and its own scratch. With OpenMP the threads are the OpenMP runtime's: PyTorch's own when it loaded
// libgomp.so.1 first (the loader then reuses it), so the kernel and PyTorch's operators share one thread pool
// instead of competing for the cores.
// Returns false when a thread could not allocate its scratch (nothing may throw out of a thread or through C).
template <typename S, typename Work>
bool over_planes(const Call& call, const Dims& d, bool backward, Work work) {
  const int64_t planes = call.batch * call.heads;
  const int64_t count = std::max<int64_t>(1, std::min<int64_t>(call.threads, planes));
  std::atomic<bool> failed{false};
  auto run = [&](int64_t part) {
    const FlushSubnormals flush;
    try {
      Scratch<S> scratch(d, backward);
      for (int64_t n = planes * part / count; n < planes * (part + 1) / count; ++n) work(n, scratch);
    } catch (const std::bad_alloc&) {
      failed = true;
    }
  };
#ifdef _OPENMP
#pragma omp parallel for num_threads(count) schedule(static, 1)
  for (int64_t part = 0; part < count; ++part) run(part);
#else
  std::vector<std::thread> pool;
  for (int64_t part = 1; part < count; ++part) pool.emplace_back(run, part);
  run(0);
  for (auto& thread : pool) thread.join();
#endif
  return !failed;
}

// 0 when the call is well formed, else a code naming what is wrong (native.py turns it into a message).
int check(const Call& c) {
  if (c.batch < 1 || c.heads < 1 || c.query_dim < 1 || c.value_dim < 1 || c.height < 1 || c.width < 1) return 1;
  if (c.kernel < 1 || c.kernel % 2 == 0) return 2;
  if (c.row_embedding && (c.row_dim < 1 || c.row_dim > c.query_dim)) return 3;
  if (c.col_embedding && (c.col_dim < 1 || c.col_dim > c.query_dim)) return 3;
  if (!c.query || !c.key || !c.value || !c.out) return 4;
  return 0;
}

template <typename S>
int forward(const Call* call) {
  if (const int error = check(*call)) return error;
  const Dims d(*call);
  return over_planes<S>(*call, d, false, [&](int64_t n, Scratch<S>& s) { forward_plane(*call, n, d, s); }) ? 0 : 5;
}

template <typename S>
int backward(const Call* call) {
  if (const int error = check(*call)) return error;
  if (!call->lse || !call->grad_out || !call->grad_query || !call->grad_key || !call->grad_value) return 4;
  const Dims d(*call);
  return over_planes<S>(*call, d, true, [&](int64_t n, Scratch<S>& s) { backward_plane(*call, n, d, s); }) ? 0 : 5;
}

}  // namespace

#define ATTNGRAFT_EXPORT extern "C" __attribute__((visibility("default")))

ATTNGRAFT_EXPORT int attngraft_neighbourhood_forward_f32(const Call* call) { return forward<float>(call); }
ATTNGRAFT_EXPORT int attngraft_neighbourhood_forward_f64(const Call* call) { return forward<double>(call); }
ATTNGRAFT_EXPORT int attngraft_neighbourhood_backward_f32(const Call* call) { return backward<float>(call); }
ATTNGRAFT_EXPORT int attngraft_neighbourhood_backward_f64(const Call* call) { return backward<double>(call); }
ATTNGRAFT_EXPORT int attngraft_neighbourhood_abi_version() { return 2; }
ATTNGRAFT_EXPORT int attngraft_neighbourhood_tile() { return static_cast<int>(TILE); }
