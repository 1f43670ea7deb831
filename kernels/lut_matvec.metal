// out[m, n] = sum_k x[m, k] * W[n, k] for a palettized (lut) weight, M <= 8 rows of x.
//
// Inputs (MLX writes the signature): x [M, K] (T), weight [N, K*BITS/32] uint32 (codes as one
// little-endian bit stream per row), lut [N/GROUP, 2^BITS] (fp16, bf16 or fp32), scales [N, 1] (any
// float type; read only when HAS_SCALE). Output out [M, N] (T).
// Template: T, M (rows of x, 1..8), BITS (2, 3, 4), GROUP (rows per palette), HAS_SCALE, ROWS (output
// rows per simdgroup), SIMDGROUPS (per threadgroup).
// Launch: grid (32, SIMDGROUPS * ceil(N / (ROWS * SIMDGROUPS)), 1), threadgroup (32, SIMDGROUPS, 1).
//
// Simdgroup g computes rows g*ROWS .. g*ROWS + ROWS-1 for all M rows of x. Its lanes first copy the
// ROWS palettes, converted to float, into threadgroup memory. Lane l then walks the chunks of 32
// weights l, l + 32, l + 64, ...: per chunk it reads each row's BITS consecutive code words, and x in
// runs of 4 consecutive values per row of x, each run read once and used for all ROWS rows.
// Summation order (float32): for each (row, m), lane l adds w * x for the weights of its chunks in
// order (chunk l first, weight 0 to 31 within a chunk); simd_sum adds the 32 lane partials; the
// total is then multiplied by the row's scale (HAS_SCALE).
//
// Guard: the kernel reads only what the shapes it receives allow. Unless x is [M, K] with K a
// multiple of 32, weight has K*BITS/32 words per row, lut has 2^BITS entries and a palette for
// every row, and (HAS_SCALE) scales has a value per row, it reads no input and writes NaN to
// out[m, n] for every row m of x. Rows past N (the last simdgroup) read row N-1 and write nothing.
// MLX passes an input of fewer than 8 elements as `const constant`, so inputs are indexed from
// their own pointer, never aliased or cast to a `const device` one.
static_assert(M >= 1 && M <= 8, "a matrix-vector kernel for 1 to 8 rows of x");
constexpr int ENTRIES = 1 << BITS;
constexpr uint MASK = ENTRIES - 1;
const int K = x_shape[1];
const int N = weight_shape[0];
const int words_per_row = weight_shape[1];
const uint lane = thread_index_in_simdgroup;
const int first = int(thread_position_in_grid.y) * ROWS;
if (first >= N) {
  return;
}
const int last = N - 1;

const bool fits = x_ndim == 2 && weight_ndim == 2 && lut_ndim == 2 && x_shape[0] == M && K % 32 == 0 &&
                  words_per_row * 32 == K * BITS && lut_shape[1] == ENTRIES && last / GROUP < lut_shape[0] &&
                  (!HAS_SCALE || (scales_ndim == 2 && scales_shape[0] == N && scales_shape[1] == 1));
if (!fits) {
  for (int r = 0; r < ROWS && first + r < N && lane == 0; ++r) {
    for (int m = 0; m < x_shape[0]; ++m) {
      out[size_t(m) * N + first + r] = static_cast<T>(as_type<float>(0x7fc00000u));
    }
  }
  return;
}

threadgroup float palettes[SIMDGROUPS * ROWS][ENTRIES];
const int own = int(simdgroup_index_in_threadgroup) * ROWS;
for (int i = int(lane); i < ROWS * ENTRIES; i += 32) {
  const int r = i / ENTRIES;
  const int row = min(first + r, last);
  palettes[own + r][i % ENTRIES] = float(lut[size_t(row / GROUP) * ENTRIES + i % ENTRIES]);
}
simdgroup_barrier(mem_flags::mem_threadgroup);

float acc[ROWS][M];
for (int r = 0; r < ROWS; ++r) {
  for (int m = 0; m < M; ++m) {
    acc[r][m] = 0.0f;
  }
}
for (int chunk = int(lane); chunk < K / 32; chunk += 32) {
  uint words[ROWS][BITS];
  for (int r = 0; r < ROWS; ++r) {
    const size_t start = size_t(min(first + r, last)) * words_per_row + size_t(chunk) * BITS;
    for (int j = 0; j < BITS; ++j) {
      words[r][j] = weight[start + j];
    }
  }
  for (int run = 0; run < 8; ++run) {
    float xs[M][4];
    for (int m = 0; m < M; ++m) {
      const size_t at = size_t(m) * K + size_t(chunk) * 32 + run * 4;
      for (int j = 0; j < 4; ++j) {
        xs[m][j] = float(x[at + j]);
      }
    }
    for (int r = 0; r < ROWS; ++r) {
      for (int j = 0; j < 4; ++j) {
        const int bit = (run * 4 + j) * BITS;
        const int word = bit / 32;
        const int shift = bit % 32;
        uint code = words[r][word] >> shift;
        if (shift + BITS > 32) {
          code |= words[r][word + 1] << (32 - shift);
        }
        const float w = palettes[own + r][code & MASK];
        for (int m = 0; m < M; ++m) {
          acc[r][m] += w * xs[m][j];
        }
      }
    }
  }
}

for (int r = 0; r < ROWS; ++r) {
  const int row = first + r;
  for (int m = 0; m < M; ++m) {
    const float total = simd_sum(acc[r][m]);
    if (lane == 0 && row < N) {
      const float row_scale = HAS_SCALE ? float(scales[row]) : 1.0f;
      out[size_t(m) * N + row] = static_cast<T>(total * row_scale);
    }
  }
}
