// out[m, n] = sum_k x[m, k] * W[n, k] for a ternary weight W = scale * t, t in {-1, 0, +1}, M <= 8.
//
// Inputs (MLX writes the signature): x [M, K] (T), weight [N, K/16] uint32 (2-bit codes c = t + 1,
// 16 per word from the least significant bits up), scales [N, K/GROUP] (fp16, bf16 or fp32).
// Output out [M, N] (T). Template: T, M (rows of x, 1..8), GROUP (weights per scale along K; a
// multiple of 32, K for one scale per row), ROWS (output rows per simdgroup), SIMDGROUPS (per
// threadgroup). Launch: grid (32, SIMDGROUPS * ceil(N / (ROWS * SIMDGROUPS)), 1), threadgroup
// (32, SIMDGROUPS, 1).
//
// Simdgroup g computes rows g*ROWS .. g*ROWS + ROWS-1 for all M rows of x. Lane l walks the chunks
// of 32 weights l, l + 32, ...: per chunk it reads each row's 2 consecutive code words, and x in
// runs of 4 consecutive values per row of x, each run read once and used for all ROWS rows.
// Summation order (float32): for each (row, m), lane l sums t * x over a chunk (weight 0 to 31),
// multiplies that by the chunk's scale and adds it to its partial, chunk l first; simd_sum adds
// the 32 lane partials.
//
// Guard: the kernel reads only what the shapes it receives allow. Unless x is [M, K] with K a
// multiple of 32, weight has K/16 words per row and scales [N, K/GROUP], it reads no input and
// writes NaN to out[m, n] for every row m of x. Rows past N (the last simdgroup) read row N-1
// and write nothing. MLX passes an input of fewer than 8 elements as `const constant`, so inputs
// are indexed from their own pointer, never aliased or cast to a `const device` one.
static_assert(GROUP % 32 == 0, "a scale covers whole chunks of 32 weights");
static_assert(M >= 1 && M <= 8, "a matrix-vector kernel for 1 to 8 rows of x");
const int K = x_shape[1];
const int N = weight_shape[0];
const int words_per_row = weight_shape[1];
const uint lane = thread_index_in_simdgroup;
const int first = int(thread_position_in_grid.y) * ROWS;
if (first >= N) {
  return;
}
const int last = N - 1;

const bool fits = x_ndim == 2 && weight_ndim == 2 && scales_ndim == 2 && x_shape[0] == M && K % 32 == 0 &&
                  words_per_row * 16 == K && scales_shape[0] == N && scales_shape[1] * GROUP == K;
if (!fits) {
  for (int r = 0; r < ROWS && first + r < N && lane == 0; ++r) {
    for (int m = 0; m < x_shape[0]; ++m) {
      out[size_t(m) * N + first + r] = static_cast<T>(as_type<float>(0x7fc00000u));
    }
  }
  return;
}

const int scales_per_row = K / GROUP;
float acc[ROWS][M];
for (int r = 0; r < ROWS; ++r) {
  for (int m = 0; m < M; ++m) {
    acc[r][m] = 0.0f;
  }
}
for (int chunk = int(lane); chunk < K / 32; chunk += 32) {
  uint words[ROWS][2];
  float part[ROWS][M];
  for (int r = 0; r < ROWS; ++r) {
    const size_t start = size_t(min(first + r, last)) * words_per_row + size_t(chunk) * 2;
    words[r][0] = weight[start];
    words[r][1] = weight[start + 1];
    for (int m = 0; m < M; ++m) {
      part[r][m] = 0.0f;
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
        const int i = run * 4 + j;
        const float t = float(int((words[r][i / 16] >> (2 * (i % 16))) & 3u) - 1);
        for (int m = 0; m < M; ++m) {
          part[r][m] += t * xs[m][j];
        }
      }
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    const size_t at = size_t(min(first + r, last)) * scales_per_row + (chunk * 32) / GROUP;
    const float scale = float(scales[at]);
    for (int m = 0; m < M; ++m) {
      acc[r][m] += scale * part[r][m];
    }
  }
}

for (int r = 0; r < ROWS; ++r) {
  for (int m = 0; m < M; ++m) {
    const float total = simd_sum(acc[r][m]);
    if (lane == 0 && first + r < N) {
      out[size_t(m) * N + first + r] = static_cast<T>(total);
    }
  }
}
