// Metal Shading Language subset for the CPU emulator (kernels/emulator.py).
//
// Included before the kernel's header and body so the same text compiles as
// C++17: scalar and vector types, address-space pointers (emu::ptr, one type
// per address space, bounds-checked), checked thread/threadgroup arrays
// (emu::array), metal:: math, as_type, select, atomics (plain memory: fibers
// never preempt), and the synchronising operations (threadgroup_barrier,
// simdgroup_barrier, simd_*) that suspend the calling fiber in
// emulator_runtime.cpp until its group arrives. kernels/metal_rewrite.py turns
// the kernel text's qualified pointers, arrays and threadgroup declarations
// into these types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

// ---- address spaces and attributes ------------------------------------------
// What metal_rewrite.py leaves of the qualifiers: non-pointer declarations only
// (program-scope `constant` becomes `const` there).
#define device
#define thread
#define threadgroup
#define METAL_FUNC inline
#define EMU_TG_SECTION __attribute__((section("emu_tg"), aligned(16)))
// `threadgroup T name[N];` becomes `EMU_TG_DECL(T) name[N]; EMU_TG_ESCAPE(name);`
#define EMU_TG_DECL(...) static EMU_TG_SECTION __VA_ARGS__
#define EMU_TG_ESCAPE(x) asm volatile("" : : "r"((const void*)&(x)) : "memory")

// ---- scalar types -------------------------------------------------------------
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
typedef _Float16 half;
typedef _Float16 float16_t;

// bfloat16 as on Apple GPUs with native bfloat: arithmetic rounds to bfloat16
// after every operation (round to nearest even), mixing with float gives float.
struct bfloat16_t {
  uint16_t bits;
  bfloat16_t() = default;
  static uint16_t round(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
  }
  template <class U, class = std::enable_if_t<std::is_arithmetic_v<U> || std::is_same_v<U, half>>>
  bfloat16_t(U v) : bits(round(float(v))) {}
  operator float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  bfloat16_t& operator+=(float o) { return *this = float(*this) + o; }
  bfloat16_t& operator-=(float o) { return *this = float(*this) - o; }
  bfloat16_t& operator*=(float o) { return *this = float(*this) * o; }
  bfloat16_t& operator/=(float o) { return *this = float(*this) / o; }
  bfloat16_t operator-() const { return bfloat16_t(-float(*this)); }
};
// bf16 (op) bf16 rounds to bf16; bf16 (op) another scalar type gives float.
template <class U>
using emu_if_scalar = std::enable_if_t<std::is_arithmetic_v<U> || std::is_same_v<U, half>, int>;
#define EMU_BF16_OP(op, R)                                                                  \
  inline R operator op(bfloat16_t a, bfloat16_t b) { return float(a) op float(b); }          \
  template <class U, emu_if_scalar<U> = 0> inline auto operator op(bfloat16_t a, U b) {     \
    return float(a) op float(b);                                                            \
  }                                                                                         \
  template <class U, emu_if_scalar<U> = 0> inline auto operator op(U a, bfloat16_t b) {     \
    return float(a) op float(b);                                                            \
  }
EMU_BF16_OP(+, bfloat16_t)
EMU_BF16_OP(-, bfloat16_t)
EMU_BF16_OP(*, bfloat16_t)
EMU_BF16_OP(/, bfloat16_t)
EMU_BF16_OP(<, bool)
EMU_BF16_OP(>, bool)
EMU_BF16_OP(<=, bool)
EMU_BF16_OP(>=, bool)
EMU_BF16_OP(==, bool)
EMU_BF16_OP(!=, bool)
#undef EMU_BF16_OP
typedef bfloat16_t bfloat;

// ---- vector types: floatN, halfN, intN, uintN, ... with .x .y .z .w and [i] -------
template <class T, int N> struct emu_vstore;
template <class T> struct emu_vstore<T, 2> { T x, y; };
template <class T> struct emu_vstore<T, 3> { T x, y, z; };
template <class T> struct emu_vstore<T, 4> { T x, y, z, w; };

template <class T, int N> struct alignas(sizeof(T) * (N == 3 ? 4 : N)) vec;
template <class V> struct emu_is_vec : std::false_type {};
template <class T, int N> struct emu_is_vec<vec<T, N>> : std::true_type {};

template <class T, int N> struct alignas(sizeof(T) * (N == 3 ? 4 : N)) vec : emu_vstore<T, N> {
  typedef T value_type;
  static constexpr int size = N;
  vec() = default;
  vec(T s) { for (int i = 0; i < N; ++i) (*this)[i] = s; }
  template <class U> explicit vec(const vec<U, N>& o) {
    for (int i = 0; i < N; ++i) (*this)[i] = T(o[i]);
  }
  // Concatenating constructors: float4(a, b, c, d), float4(float2, float2), float4(float3, w)...
  template <class A, class B, class... R> vec(const A& a, const B& b, const R&... r) {
    int i = 0;
    put(i, a);
    put(i, b);
    (put(i, r), ...);
  }
  T& operator[](int i) { return (&this->x)[i]; }
  const T& operator[](int i) const { return (&this->x)[i]; }

#define EMU_VEC_OP(op)                                                                    \
  friend vec operator op(vec a, const vec& b) { for (int i = 0; i < N; ++i) a[i] = a[i] op b[i]; return a; } \
  vec& operator op##=(const vec& b) { return *this = *this op b; }
  EMU_VEC_OP(+) EMU_VEC_OP(-) EMU_VEC_OP(*) EMU_VEC_OP(/)
#undef EMU_VEC_OP
#define EMU_VEC_IOP(op)                                                                   \
  template <class U = T, class = std::enable_if_t<std::is_integral_v<U>>>                 \
  friend vec operator op(vec a, const vec& b) { for (int i = 0; i < N; ++i) a[i] = a[i] op b[i]; return a; } \
  template <class U = T, class = std::enable_if_t<std::is_integral_v<U>>>                 \
  vec& operator op##=(const vec& b) { return *this = *this op b; }
  EMU_VEC_IOP(%) EMU_VEC_IOP(&) EMU_VEC_IOP(|) EMU_VEC_IOP(^) EMU_VEC_IOP(<<) EMU_VEC_IOP(>>)
#undef EMU_VEC_IOP
  vec operator-() const { vec r; for (int i = 0; i < N; ++i) r[i] = -(*this)[i]; return r; }

 private:
  template <class A> void put(int& i, const A& a) {
    if constexpr (emu_is_vec<A>::value) {
      for (int k = 0; k < A::size; ++k) (*this)[i++] = T(a[k]);
    } else {
      (*this)[i++] = T(a);
    }
  }
};

#define EMU_VEC_TYPES(T, name) \
  typedef vec<T, 2> name##2;   \
  typedef vec<T, 3> name##3;   \
  typedef vec<T, 4> name##4;
EMU_VEC_TYPES(float, float)
EMU_VEC_TYPES(half, half)
EMU_VEC_TYPES(bfloat16_t, bfloat)
EMU_VEC_TYPES(int, int)
EMU_VEC_TYPES(uint, uint)
EMU_VEC_TYPES(short, short)
EMU_VEC_TYPES(ushort, ushort)
EMU_VEC_TYPES(char, char)
EMU_VEC_TYPES(uchar, uchar)
EMU_VEC_TYPES(bool, bool)
#undef EMU_VEC_TYPES

// ---- address-space pointers and checked arrays --------------------------------
// `const device T*` is rewritten to emu::ptr<emu::device_space, const T>: the
// address space is part of the type, so a constant pointer never converts to a
// device one (as in Metal), while adding const or casting within one space
// works. A pointer made from a kernel buffer carries the buffer's exact bounds:
// an access outside them (any byte of the element) is redirected to an
// inaccessible trap page, so the CPU faults on the real read or write and the
// runtime names the buffer, the element and whether it was a read or a write.
// Forming an out-of-bounds pointer without using it is fine, as on the GPU.
namespace emu {
enum space { device_space, constant_space, threadgroup_space, thread_space };
struct buffer_view { void* data; size_t nbytes; };
// Accesses through a kernel buffer's pointers and the bytes they cover (one access
// of a float4 counts once, 16 bytes): the emulator's memory-traffic counts.
struct traffic { unsigned long long accesses, bytes; };
}  // namespace emu
// Defined in emulator_runtime.cpp: one counter per kernel buffer of the current run.
extern "C" emu::traffic* emu_traffic;
extern "C" void* emu_out_of_bounds(int buffer, long long offset);
extern "C" [[noreturn]] void emu_array_fault(int array, long long index, int size);

namespace emu {
template <int S, class T> struct ptr {
  T* p = nullptr;
  const char* lo = nullptr;  // bounds of the buffer (bytes), or none when buffer < 0
  const char* hi = nullptr;
  int buffer = -1;

  ptr() = default;
  ptr(T* raw) : p(raw) {}  // &x, a threadgroup or thread array: unbounded
  ptr(T* raw, const char* l, const char* h, int b) : p(raw), lo(l), hi(h), buffer(b) {}
  template <class U, std::enable_if_t<std::is_convertible_v<U*, T*>, int> = 0>
  ptr(const ptr<S, U>& o) : p(o.p), lo(o.lo), hi(o.hi), buffer(o.buffer) {}
  template <class U, std::enable_if_t<!std::is_convertible_v<U*, T*>, int> = 0>
  explicit ptr(const ptr<S, U>& o) : p((T*)o.p), lo(o.lo), hi(o.hi), buffer(o.buffer) {}

  T* checked(T* q) const {
    if (buffer < 0) return q;
    emu_traffic[buffer].accesses += 1;
    emu_traffic[buffer].bytes += sizeof(T);
    const char* c = reinterpret_cast<const char*>(q);
    if (c >= lo && c + sizeof(T) <= hi) return q;
    return static_cast<T*>(emu_out_of_bounds(buffer, c - lo));
  }
  std::add_lvalue_reference_t<T> operator[](ptrdiff_t i) const { return *checked(p + i); }
  std::add_lvalue_reference_t<T> operator*() const { return *checked(p); }
  T* operator->() const { return checked(p); }
  ptr operator+(ptrdiff_t i) const { ptr r = *this; r.p += i; return r; }
  ptr operator-(ptrdiff_t i) const { ptr r = *this; r.p -= i; return r; }
  friend ptr operator+(ptrdiff_t i, const ptr& a) { return a + i; }
  ptrdiff_t operator-(const ptr& o) const { return p - o.p; }
  ptr& operator+=(ptrdiff_t i) { p += i; return *this; }
  ptr& operator-=(ptrdiff_t i) { p -= i; return *this; }
  ptr& operator++() { ++p; return *this; }
  ptr& operator--() { --p; return *this; }
  ptr operator++(int) { ptr r = *this; ++p; return r; }
  ptr operator--(int) { ptr r = *this; --p; return r; }
  bool operator==(const ptr& o) const { return p == o.p; }
  bool operator!=(const ptr& o) const { return p != o.p; }
  bool operator<(const ptr& o) const { return p < o.p; }
  bool operator<=(const ptr& o) const { return p <= o.p; }
  bool operator>(const ptr& o) const { return p > o.p; }
  bool operator>=(const ptr& o) const { return p >= o.p; }
};

// reinterpret_cast / static_cast between pointers of one address space.
template <class To, int S, class U> inline To cast(const ptr<S, U>& o) { return To(o); }

// Kernel argument `i` as a pointer bounded by its buffer.
template <int S, class T> inline ptr<S, T> bind(const buffer_view* b, int i) {
  const char* lo = static_cast<const char*>(b[i].data);
  return ptr<S, T>(static_cast<T*>(b[i].data), lo, lo + b[i].nbytes, i);
}

// A thread-private (or threadgroup) array `T name[N]`, numbered `Id` by the
// rewrite: indexing outside [0, N) stops the kernel with the array's name.
template <class T, int N, int Id> struct array {
  T v[N];
  template <class I> T& operator[](I i) { return v[index(i)]; }
  template <class I> const T& operator[](I i) const { return v[index(i)]; }
  template <class I> static long long index(I i) {
    long long k = static_cast<long long>(i);
    if (k < 0 || k >= N) emu_array_fault(Id, k, N);
    return k;
  }
  T* begin() { return v; }
  T* end() { return v + N; }
  const T* begin() const { return v; }
  const T* end() const { return v + N; }
  template <int S> operator ptr<S, T>() { return ptr<S, T>(v); }
  template <int S> operator ptr<S, const T>() const { return ptr<S, const T>(v); }
};
}  // namespace emu

// ---- metal:: functions ----------------------------------------------------------
namespace metal {

template <class To, class From> inline To as_type(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "as_type: sizes differ");
  To r;
  std::memcpy(&r, &v, sizeof(To));
  return r;
}

// Unary float functions computed in float and rounded back to the argument type.
#define EMU_UNARY(name, expr)                                                        \
  template <class T> inline T name(T a) {                                            \
    if constexpr (emu_is_vec<T>::value) {                                            \
      for (int i = 0; i < T::size; ++i) a[i] = name(a[i]);                           \
      return a;                                                                      \
    } else {                                                                         \
      float x = float(a);                                                            \
      return T(expr);                                                                \
    }                                                                                \
  }
EMU_UNARY(exp, __builtin_expf(x))
EMU_UNARY(exp2, __builtin_exp2f(x))
EMU_UNARY(log, __builtin_logf(x))
EMU_UNARY(log2, __builtin_log2f(x))
EMU_UNARY(sqrt, __builtin_sqrtf(x))
EMU_UNARY(rsqrt, 1.0f / __builtin_sqrtf(x))
EMU_UNARY(sin, __builtin_sinf(x))
EMU_UNARY(cos, __builtin_cosf(x))
EMU_UNARY(tanh, __builtin_tanhf(x))
EMU_UNARY(fabs, __builtin_fabsf(x))
EMU_UNARY(floor, __builtin_floorf(x))
EMU_UNARY(ceil, __builtin_ceilf(x))
EMU_UNARY(round, __builtin_roundf(x))
EMU_UNARY(rint, __builtin_rintf(x))
EMU_UNARY(trunc, __builtin_truncf(x))
#undef EMU_UNARY

template <class T> inline T abs(T a) {
  if constexpr (emu_is_vec<T>::value) {
    for (int i = 0; i < T::size; ++i) a[i] = abs(a[i]);
    return a;
  } else if constexpr (std::is_integral_v<T>) {
    return a < 0 ? T(-a) : a;
  } else {
    return T(__builtin_fabsf(float(a)));
  }
}

// Two-argument functions: scalars of mixed types use their common type.
template <class A, class B> inline auto max(A a, B b) {
  if constexpr (emu_is_vec<A>::value) {
    A r;
    for (int i = 0; i < A::size; ++i) r[i] = max(a[i], typename A::value_type(A(b)[i]));
    return r;
  } else {
    using C = std::common_type_t<A, B>;
    return C(a) > C(b) ? C(a) : C(b);
  }
}
template <class A, class B> inline auto min(A a, B b) {
  if constexpr (emu_is_vec<A>::value) {
    A r;
    for (int i = 0; i < A::size; ++i) r[i] = min(a[i], typename A::value_type(A(b)[i]));
    return r;
  } else {
    using C = std::common_type_t<A, B>;
    return C(a) < C(b) ? C(a) : C(b);
  }
}
template <class A, class B> inline auto fmax(A a, B b) { return max(a, b); }
template <class A, class B> inline auto fmin(A a, B b) { return min(a, b); }
template <class T, class L, class H> inline T clamp(T x, L lo, H hi) { return T(min(max(x, lo), hi)); }
template <class T> inline T pow(T a, T b) { return T(__builtin_powf(float(a), float(b))); }
template <class T> inline T fma(T a, T b, T c) {
  if constexpr (emu_is_vec<T>::value) {
    for (int i = 0; i < T::size; ++i) a[i] = fma(a[i], b[i], c[i]);
    return a;
  } else {
    return T(__builtin_fmaf(float(a), float(b), float(c)));
  }
}
template <class T, int N> inline T dot(vec<T, N> a, vec<T, N> b) {
  T s = T(0);
  for (int i = 0; i < N; ++i) s += a[i] * b[i];
  return s;
}
template <class T> inline T select(T a, T b, bool c) { return c ? b : a; }
template <class T> inline bool isnan(T a) { return __builtin_isnan(float(a)); }
template <class T> inline bool isinf(T a) { return __builtin_isinf(float(a)); }

// MLX's helper (its utils.h): memory offset of element `elem` of a strided array.
template <class IdxT = int64_t>
inline IdxT elem_to_loc(IdxT elem, emu::ptr<emu::constant_space, const int> shape,
                        emu::ptr<emu::constant_space, const int64_t> strides, int ndim) {
  IdxT loc = 0;
  for (int i = ndim - 1; i >= 0 && elem > 0; --i) {
    loc += IdxT(elem % shape[i]) * IdxT(strides[i]);
    elem /= shape[i];
  }
  return loc;
}

namespace precise {
using metal::exp; using metal::exp2; using metal::log; using metal::log2; using metal::sqrt;
using metal::rsqrt; using metal::sin; using metal::cos; using metal::tanh; using metal::pow;
}  // namespace precise
namespace fast {
using metal::exp; using metal::exp2; using metal::log; using metal::log2; using metal::sqrt;
using metal::rsqrt; using metal::sin; using metal::cos; using metal::tanh; using metal::pow;
}  // namespace fast

// ---- atomics (plain memory: a fiber runs alone until it synchronises) ------------
enum memory_order { memory_order_relaxed, memory_order_seq_cst };
template <class T> struct atomic { T v; };
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
template <class T, class U> inline T atomic_load_explicit(const atomic<T>* a, U) { return a->v; }
template <class T, class U> inline void atomic_store_explicit(atomic<T>* a, T v, U) { a->v = v; }
template <class T, class U> inline T atomic_exchange_explicit(atomic<T>* a, T v, U) {
  T o = a->v; a->v = v; return o;
}
#define EMU_ATOMIC_RMW(name, expr)                                          \
  template <class T, class U> inline T name(atomic<T>* a, T v, U) {        \
    T o = a->v; a->v = (expr); return o;                                  \
  }
EMU_ATOMIC_RMW(atomic_fetch_add_explicit, o + v)
EMU_ATOMIC_RMW(atomic_fetch_sub_explicit, o - v)
EMU_ATOMIC_RMW(atomic_fetch_max_explicit, o > v ? o : v)
EMU_ATOMIC_RMW(atomic_fetch_min_explicit, o < v ? o : v)
EMU_ATOMIC_RMW(atomic_fetch_and_explicit, o & v)
EMU_ATOMIC_RMW(atomic_fetch_or_explicit, o | v)
EMU_ATOMIC_RMW(atomic_fetch_xor_explicit, o ^ v)
#undef EMU_ATOMIC_RMW
template <class T, class U, class V>
inline bool atomic_compare_exchange_weak_explicit(atomic<T>* a, T* expected, T v, U, V) {
  if (a->v == *expected) { a->v = v; return true; }
  *expected = a->v;
  return false;
}

}  // namespace metal
using namespace metal;

// ---- synchronisation (implemented in emulator_runtime.cpp) ---------------------
// A simd op stores one request per lane and suspends; when every live lane of the
// simdgroup waits at an op, the runtime calls `fn` once with the requests of the
// lanes waiting at the same op (nullptr for the others), then resumes them.
struct emu_simd_req {
  const void* in;
  void* out;
  int arg;
};
typedef void (*emu_simd_fn)(emu_simd_req* const* lanes);  // lanes[32]
extern "C" void emu_simd_wait(emu_simd_fn fn, const void* in, void* out, int arg);
extern "C" void emu_threadgroup_barrier(const char* file, int line);

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }
// The call's position in the kernel text identifies the barrier (divergence check).
inline void threadgroup_barrier(mem_flags, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu_threadgroup_barrier(file, line);
}

namespace emu {
constexpr int kSimdWidth = 32;

template <class T> inline T value(const emu_simd_req* r) { return *static_cast<const T*>(r->in); }
template <class T> inline void reply(emu_simd_req* r, T v) { *static_cast<T*>(r->out) = v; }

template <class T, class Combine> inline void reduce(emu_simd_req* const* lanes, Combine f) {
  bool first = true;
  T acc{};
  for (int i = 0; i < kSimdWidth; ++i)
    if (lanes[i]) {
      acc = first ? value<T>(lanes[i]) : T(f(acc, value<T>(lanes[i])));
      first = false;
    }
  for (int i = 0; i < kSimdWidth; ++i)
    if (lanes[i]) reply(lanes[i], acc);
}
template <class T> void sum(emu_simd_req* const* l) { reduce<T>(l, [](T a, T b) { return a + b; }); }
template <class T> void prod(emu_simd_req* const* l) { reduce<T>(l, [](T a, T b) { return a * b; }); }
template <class T> void vmax(emu_simd_req* const* l) { reduce<T>(l, [](T a, T b) { return metal::max(a, b); }); }
template <class T> void vmin(emu_simd_req* const* l) { reduce<T>(l, [](T a, T b) { return metal::min(a, b); }); }
template <class T> void band(emu_simd_req* const* l) { reduce<T>(l, [](T a, T b) { return a & b; }); }
template <class T> void bor(emu_simd_req* const* l) { reduce<T>(l, [](T a, T b) { return a | b; }); }
template <class T> void bxor(emu_simd_req* const* l) { reduce<T>(l, [](T a, T b) { return a ^ b; }); }

// Prefix sums over the participating lanes, in lane order.
template <class T, bool Inclusive> void prefix_sum(emu_simd_req* const* lanes) {
  T acc = T(0);
  for (int i = 0; i < kSimdWidth; ++i)
    if (lanes[i]) {
      T v = value<T>(lanes[i]);
      if (Inclusive) acc = acc + v;
      reply(lanes[i], acc);
      if (!Inclusive) acc = acc + v;
    }
}

// Lane permutations: lane i reads lane src(i, arg). A source lane outside the
// simdgroup or not taking part returns the caller's own value (what Metal
// documents for shuffle_down/up at the edges; deterministic for inactive lanes).
template <class T, int (*Src)(int, int)> void permute(emu_simd_req* const* lanes) {
  T vals[kSimdWidth];
  for (int i = 0; i < kSimdWidth; ++i)
    if (lanes[i]) vals[i] = value<T>(lanes[i]);
  for (int i = 0; i < kSimdWidth; ++i)
    if (lanes[i]) {
      int s = Src(i, lanes[i]->arg);
      reply(lanes[i], (s >= 0 && s < kSimdWidth && lanes[s]) ? vals[s] : vals[i]);
    }
}
inline int src_index(int, int a) { return a; }
inline int src_down(int i, int a) { return i + a; }
inline int src_up(int i, int a) { return i - a; }
inline int src_xor(int i, int a) { return i ^ a; }

template <void (*F)(emu_simd_req* const*), class T> inline T call(T v, int arg = 0) {
  T out;
  emu_simd_wait(F, &v, &out, arg);
  return out;
}
inline void nothing(emu_simd_req* const*) {}
template <bool All> void all_any(emu_simd_req* const* lanes) {
  bool r = All;
  for (int i = 0; i < kSimdWidth; ++i)
    if (lanes[i]) r = All ? (r && value<bool>(lanes[i])) : (r || value<bool>(lanes[i]));
  for (int i = 0; i < kSimdWidth; ++i)
    if (lanes[i]) reply(lanes[i], r);
}
// The value of the lowest participating lane, to every participating lane.
template <class T> void first(emu_simd_req* const* lanes) {
  int s = 0;
  while (!lanes[s]) ++s;
  T v = value<T>(lanes[s]);
  for (int i = s; i < kSimdWidth; ++i)
    if (lanes[i]) reply(lanes[i], v);
}
}  // namespace emu

template <class T> inline T simd_sum(T v) { return emu::call<emu::sum<T>>(v); }
template <class T> inline T simd_product(T v) { return emu::call<emu::prod<T>>(v); }
template <class T> inline T simd_max(T v) { return emu::call<emu::vmax<T>>(v); }
template <class T> inline T simd_min(T v) { return emu::call<emu::vmin<T>>(v); }
template <class T> inline T simd_and(T v) { return emu::call<emu::band<T>>(v); }
template <class T> inline T simd_or(T v) { return emu::call<emu::bor<T>>(v); }
template <class T> inline T simd_xor(T v) { return emu::call<emu::bxor<T>>(v); }
template <class T> inline T simd_prefix_inclusive_sum(T v) { return emu::call<emu::prefix_sum<T, true>>(v); }
template <class T> inline T simd_prefix_exclusive_sum(T v) { return emu::call<emu::prefix_sum<T, false>>(v); }
template <class T> inline T simd_shuffle(T v, ushort lane) { return emu::call<emu::permute<T, emu::src_index>>(v, lane); }
template <class T> inline T simd_broadcast(T v, ushort lane) { return emu::call<emu::permute<T, emu::src_index>>(v, lane); }
template <class T> inline T simd_broadcast_first(T v) { return emu::call<emu::first<T>>(v); }
template <class T> inline T simd_shuffle_down(T v, ushort d) { return emu::call<emu::permute<T, emu::src_down>>(v, d); }
template <class T> inline T simd_shuffle_up(T v, ushort d) { return emu::call<emu::permute<T, emu::src_up>>(v, d); }
template <class T> inline T simd_shuffle_xor(T v, ushort m) { return emu::call<emu::permute<T, emu::src_xor>>(v, m); }
inline bool simd_all(bool v) { return emu::call<emu::all_any<true>>(v); }
inline bool simd_any(bool v) { return emu::call<emu::all_any<false>>(v); }
inline void simdgroup_barrier(mem_flags) { emu_simd_wait(emu::nothing, nullptr, nullptr, 0); }

// ---- thread attributes of one thread (filled by the runtime) --------------------
struct emu_attrs {
  uint3 thread_position_in_grid, threadgroup_position_in_grid, thread_position_in_threadgroup;
  uint3 threads_per_threadgroup, dispatch_threads_per_threadgroup, threadgroups_per_grid;
  uint3 threads_per_grid, grid_origin;
  uint thread_index_in_threadgroup, thread_index_in_simdgroup, simdgroup_index_in_threadgroup;
  uint threads_per_simdgroup, simdgroups_per_threadgroup, thread_index_in_quadgroup;
  uint quadgroup_index_in_threadgroup, quadgroups_per_threadgroup;
};
// Defined by the code emulator.py generates: calls the kernel for one thread.
extern "C" void emu_thread_main(const emu::buffer_view* buffers, const emu_attrs* attrs);
