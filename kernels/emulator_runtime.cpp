// Runtime of the Metal CPU emulator: guarded buffers, fibers, scheduler, faults.
//
// emu_run() dispatches a grid of threads (dispatchThreads semantics) one
// threadgroup at a time. With `fibers` set, each thread of a threadgroup is a
// fiber (a stack switch in assembly on x86-64, ucontext elsewhere) that runs
// until it synchronises (threadgroup_barrier, a simd op, simdgroup_barrier) or
// returns; when no fiber can run, the scheduler resolves what it can (simd ops
// first, then the barrier) or reports a divergence. Without `fibers` (kernels
// that never synchronise) threads are plain calls. `schedule` orders threadgroups
// and threads: 0 forward, 1 reverse, any other value seeds a shuffle of the
// groups and, at every round of the scheduler (each barrier / simd point), of
// the order in which the waiting threads resume; runs that differ reveal a
// kernel depending on an order the GPU does not guarantee.
//
// Kernel pointers carry their buffer's exact bounds (emu::ptr in metal_shim.h);
// an access outside them is sent to a PROT_NONE trap page, whose fault is
// reported with the buffer and offset emu_out_of_bounds recorded. Behind that,
// each buffer lives in its own mapping between two 32 MiB PROT_NONE reserves
// (address space only), its end against the upper one; the slack up to the page
// edges is a redzone checked after the run (for raw pointers taken with &). Inputs
// are mapped read-only. A fault (trap or guard page, read-only page, wild pointer,
// integer division by zero, a thread array index out of range) jumps back to
// emu_run, which reports it in emu_result.
#include <signal.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "metal_shim.h"

extern "C" {
extern char __start_emu_tg[] __attribute__((weak));
extern char __stop_emu_tg[] __attribute__((weak));
}

namespace {

enum Code { OK = 0, OUT_OF_BOUNDS = 1, REDZONE = 2, BARRIER_DIVERGENCE = 3, SIMD_DIVERGENCE = 4,
            FAULT = 5, LIMIT = 6, ARRAY_INDEX = 7 };
enum State { RUNNABLE, AT_BARRIER, AT_SIMD, DONE };

constexpr unsigned char kRedzone = 0xA5;
constexpr unsigned char kPoison = 0xFF;  // NaN in every float type, -1 in integers
constexpr size_t kStackBytes = 256 * 1024;  // address space; pages are touched on use
constexpr size_t kMaxThreadgroupMemory = 32 * 1024;
constexpr size_t kGuardBytes = 32 << 20;  // PROT_NONE reserve on each side of a buffer
constexpr size_t kTrapBytes = 1 << 16;     // PROT_NONE; larger than any element type

}  // namespace

// What went wrong, for emulator.py to turn into an exception (all zero when OK).
struct emu_result {
  int code;
  int buffer;            // OUT_OF_BOUNDS / REDZONE: index of the buffer; ARRAY_INDEX: the array's number
  long long offset;      // byte offset from the buffer start of the bad access; ARRAY_INDEX: the index
  int is_write;          // 1 write, 0 read, -1 unknown
  unsigned position[3];  // thread_position_in_grid of the faulting thread
  char message[400];
};

namespace {

struct Buffer {
  char* map = nullptr;   // whole mapping, guard pages included
  size_t map_bytes = 0;
  char* body = nullptr;  // accessible pages
  size_t body_bytes = 0;
  char* data = nullptr;  // the buffer itself, its end at (or just under) body end
  size_t nbytes = 0;
};

// ---- fibers: start a function on a stack, switch between stacks ----------------
#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores its pointer in
// *save and continues on the stack `load` (which was saved the same way).
extern "C" void emu_switch_stack(void** save, void* load);
asm(R"(
  .text
  .hidden emu_switch_stack
  .type emu_switch_stack, @function
emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch_stack, .-emu_switch_stack
)");
struct Context { void* sp; };
void context_start(Context& c, char* stack, size_t size, void (*entry)()) {
  void** top = reinterpret_cast<void**>(stack + size);  // 16-byte aligned
  top[-1] = nullptr;                                     // entry's return address: never used
  top[-2] = reinterpret_cast<void*>(entry);              // popped by `ret`
  for (int i = 3; i <= 8; ++i) top[-i] = nullptr;        // the six saved registers
  c.sp = top - 8;
}
void context_switch(Context& from, Context& to) { emu_switch_stack(&from.sp, to.sp); }
#else
struct Context { ucontext_t uc; };
void context_start(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Fiber {
  Context ctx;
  emu_attrs attrs;
  State state;
  const char* site_file;  // where the barrier call is in the kernel text
  int site_line;
  emu_simd_fn fn;
  emu_simd_req req;
};

struct Run {
  std::vector<Buffer> buffers;
  std::vector<emu::buffer_view> views;  // what the kernel's pointers are bound to
  int trap_buffer = -1;                 // the access emu_out_of_bounds sent to the trap page
  long long trap_offset = 0;
  uint64_t rng = 0;                     // shuffled schedule state (0: forward or reverse)
  std::vector<Fiber> fibers;
  Context scheduler;
  Fiber* current = nullptr;
  emu_attrs direct_attrs{};  // the running thread when not using fibers
  bool use_fibers = false;
  std::vector<emu::traffic> traffic;  // per buffer
  unsigned long long simd_ops = 0;    // simd operations resolved, one per simdgroup and call
  sigjmp_buf on_fault;
  emu_result* result = nullptr;
};

Run* g_run = nullptr;
char* g_trap = nullptr;  // kTrapBytes of PROT_NONE
char* g_stacks = nullptr;  // one mapping, a guard page under every fiber stack
size_t g_stack_count = 0;
size_t g_page = 0;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

const emu_attrs& current_attrs() {
  return g_run->use_fibers && g_run->current ? g_run->current->attrs : g_run->direct_attrs;
}

[[noreturn]] void fail(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void fail(int code, const char* fmt, ...) {
  emu_result* r = g_run->result;
  r->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->message, sizeof r->message, fmt, ap);
  va_end(ap);
  siglongjmp(g_run->on_fault, 1);
}

void record_thread() {
  const emu_attrs& a = current_attrs();
  for (int i = 0; i < 3; ++i) g_run->result->position[i] = a.thread_position_in_grid[i];
}

// ---- faults ---------------------------------------------------------------------
void on_signal(int sig, siginfo_t* info, void* uctx) {
  emu_result* r = g_run->result;
  record_thread();
  char* addr = static_cast<char*>(info->si_addr);
  r->is_write = -1;
#if defined(__x86_64__) && defined(REG_ERR)
  if (sig == SIGSEGV) r->is_write = (static_cast<ucontext_t*>(uctx)->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#else
  (void)uctx;
#endif
  if (sig == SIGFPE) fail(FAULT, "arithmetic fault (integer division by zero?)");
  if (addr >= g_trap && addr < g_trap + kTrapBytes && g_run->trap_buffer >= 0) {
    r->buffer = g_run->trap_buffer;
    r->offset = g_run->trap_offset;
    fail(OUT_OF_BOUNDS, "outside the buffer's bounds");
  }
  for (size_t i = 0; i < g_run->buffers.size(); ++i) {
    const Buffer& b = g_run->buffers[i];
    if (addr >= b.map && addr < b.map + b.map_bytes) {
      r->buffer = int(i);
      r->offset = addr - b.data;
      fail(OUT_OF_BOUNDS, "bad access");
    }
  }
  fail(FAULT, "invalid memory access at %p (a wild pointer, or thread-local arrays over the %zu KiB "
       "fiber stack)", (void*)addr, kStackBytes / 1024);
}

// ---- buffers --------------------------------------------------------------------
bool map_buffer(Buffer& b, const void* host, size_t nbytes, bool writable) {
  b.nbytes = nbytes;
  size_t padded = round_up(nbytes, 16);
  b.body_bytes = round_up(padded ? padded : 1, g_page);
  b.map_bytes = b.body_bytes + 2 * kGuardBytes;
  void* m = mmap(nullptr, b.map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return false;
  b.map = static_cast<char*>(m);
  b.body = b.map + kGuardBytes;
  if (mprotect(b.body, b.body_bytes, PROT_READ | PROT_WRITE) != 0) return false;
  b.data = b.body + b.body_bytes - padded;
  memset(b.body, kRedzone, b.body_bytes);
  if (nbytes) memcpy(b.data, host, nbytes);
  return writable || mprotect(b.body, b.body_bytes, PROT_READ) == 0;
}

// Index of the first corrupted byte of the redzones, as an offset from data; 0 if clean.
long long redzone_damage(const Buffer& b) {
  for (char* p = b.body; p < b.data; ++p)
    if ((unsigned char)*p != kRedzone) return p - b.data;
  for (char* p = b.data + b.nbytes; p < b.body + b.body_bytes; ++p)
    if ((unsigned char)*p != kRedzone) return p - b.data;
  return 0;
}

// ---- threads --------------------------------------------------------------------
uint3 u3(unsigned x, unsigned y, unsigned z) { return uint3(x, y, z); }

void fill_attrs(emu_attrs& a, const unsigned* grid, const unsigned* tg, const unsigned* group,
                const unsigned* size, const unsigned* local) {
  unsigned groups[3], count = size[0] * size[1] * size[2];
  for (int i = 0; i < 3; ++i) groups[i] = (grid[i] + tg[i] - 1) / tg[i];
  a.thread_position_in_threadgroup = u3(local[0], local[1], local[2]);
  a.threadgroup_position_in_grid = u3(group[0], group[1], group[2]);
  a.thread_position_in_grid =
      u3(group[0] * tg[0] + local[0], group[1] * tg[1] + local[1], group[2] * tg[2] + local[2]);
  a.threads_per_threadgroup = u3(size[0], size[1], size[2]);
  a.dispatch_threads_per_threadgroup = u3(tg[0], tg[1], tg[2]);
  a.threadgroups_per_grid = u3(groups[0], groups[1], groups[2]);
  a.threads_per_grid = u3(grid[0], grid[1], grid[2]);
  a.grid_origin = u3(0, 0, 0);
  unsigned index = (local[2] * size[1] + local[1]) * size[0] + local[0];
  a.thread_index_in_threadgroup = index;
  a.thread_index_in_simdgroup = index % emu::kSimdWidth;
  a.simdgroup_index_in_threadgroup = index / emu::kSimdWidth;
  a.threads_per_simdgroup = emu::kSimdWidth;
  a.simdgroups_per_threadgroup = (count + emu::kSimdWidth - 1) / emu::kSimdWidth;
  a.thread_index_in_quadgroup = index % 4;
  a.quadgroup_index_in_threadgroup = index / 4;
  a.quadgroups_per_threadgroup = (count + 3) / 4;
}

void fiber_entry() {
  Fiber* f = g_run->current;
  emu_thread_main(g_run->views.data(), &f->attrs);
  f->state = DONE;
  context_switch(f->ctx, g_run->scheduler);  // never resumed
}

bool ensure_stacks(size_t n) {
  if (n <= g_stack_count) return true;
  if (g_stacks) munmap(g_stacks, g_stack_count * (kStackBytes + g_page));
  size_t bytes = n * (kStackBytes + g_page);
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return g_stacks = nullptr, g_stack_count = 0, false;
  g_stacks = static_cast<char*>(m);
  g_stack_count = n;
  for (size_t i = 0; i < n; ++i) mprotect(g_stacks + i * (kStackBytes + g_page), g_page, PROT_NONE);
  return true;
}

const char* group_str(const emu_attrs& a) {
  static char s[64];
  snprintf(s, sizeof s, "(%u, %u, %u)", a.threadgroup_position_in_grid.x, a.threadgroup_position_in_grid.y,
           a.threadgroup_position_in_grid.z);
  return s;
}

// Resolve the simd ops of every simdgroup whose live lanes all wait (at a simd op
// or the barrier); false if none could be resolved.
bool resolve_simd(std::vector<Fiber>& fs) {
  bool any = false;
  for (size_t base = 0; base < fs.size(); base += emu::kSimdWidth) {
    emu_simd_req* lanes[emu::kSimdWidth] = {};
    emu_simd_fn fn = nullptr;
    size_t end = std::min(fs.size(), base + emu::kSimdWidth);
    for (size_t i = base; i < end; ++i) {
      Fiber& f = fs[i];
      if (f.state != AT_SIMD) continue;
      if (fn && f.fn != fn) {
        g_run->current = &f;
        record_thread();
        fail(SIMD_DIVERGENCE,
             "lanes of simdgroup %zu of threadgroup %s wait at different simd operations "
             "(divergent simd_* calls are not supported by the emulator)",
             base / emu::kSimdWidth, group_str(f.attrs));
      }
      fn = f.fn;
      lanes[f.attrs.thread_index_in_simdgroup] = &f.req;
    }
    if (!fn) continue;
    fn(lanes);
    ++g_run->simd_ops;
    for (size_t i = base; i < end; ++i)
      if (fs[i].state == AT_SIMD) fs[i].state = RUNNABLE;
    any = true;
  }
  return any;
}

void release_barrier(std::vector<Fiber>& fs) {
  size_t waiting = 0, done = 0;
  Fiber* first = nullptr;
  for (Fiber& f : fs) {
    if (f.state == DONE) { ++done; continue; }
    ++waiting;
    if (!first) first = &f;
    if (f.site_line != first->site_line || strcmp(f.site_file, first->site_file) != 0) {
      g_run->current = &f;
      record_thread();
      fail(BARRIER_DIVERGENCE,
           "barrier divergence: threads of threadgroup %s wait at different threadgroup_barrier calls",
           group_str(f.attrs));
    }
  }
  if (done) {
    g_run->current = first;
    record_thread();
    fail(BARRIER_DIVERGENCE,
         "barrier divergence: %zu threads of threadgroup %s wait at a threadgroup_barrier that %zu "
         "threads of the group never reach (they returned)",
         waiting, group_str(first->attrs), done);
  }
  for (Fiber& f : fs) f.state = RUNNABLE;
}

// splitmix64: the shuffled schedule's random numbers.
uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The order to visit n threads (or threadgroups) in: forward, reverse, or a
// fresh random permutation when the run is shuffled.
void visit_order(std::vector<size_t>& order, size_t n, bool reverse) {
  order.resize(n);
  for (size_t k = 0; k < n; ++k) order[k] = reverse ? n - 1 - k : k;
  if (!g_run->rng) return;
  for (size_t k = n; k > 1; --k) std::swap(order[k - 1], order[next_random(g_run->rng) % k]);
}

void run_group_fibers(const unsigned* grid, const unsigned* tg, const unsigned* group,
                      const unsigned* size, bool reverse) {
  std::vector<Fiber>& fs = g_run->fibers;
  size_t n = size_t(size[0]) * size[1] * size[2];
  fs.resize(n);
  unsigned local[3];
  size_t i = 0;
  for (local[2] = 0; local[2] < size[2]; ++local[2])
    for (local[1] = 0; local[1] < size[1]; ++local[1])
      for (local[0] = 0; local[0] < size[0]; ++local[0], ++i) {
        Fiber& f = fs[i];
        fill_attrs(f.attrs, grid, tg, group, size, local);
        f.state = RUNNABLE;
        context_start(f.ctx, g_stacks + i * (kStackBytes + g_page) + g_page, kStackBytes, fiber_entry);
      }
  std::vector<size_t> order;
  for (;;) {
    size_t live = 0;
    visit_order(order, n, reverse);
    for (size_t k = 0; k < n; ++k) {
      Fiber& f = fs[order[k]];
      if (f.state == RUNNABLE) {
        g_run->current = &f;
        context_switch(g_run->scheduler, f.ctx);
      }
      live += f.state != DONE;
    }
    g_run->current = nullptr;
    if (!live) return;
    if (!resolve_simd(fs)) release_barrier(fs);
  }
}

void run_group_direct(const unsigned* grid, const unsigned* tg, const unsigned* group,
                      const unsigned* size, bool reverse) {
  size_t n = size_t(size[0]) * size[1] * size[2];
  std::vector<size_t> order;
  visit_order(order, n, reverse);
  for (size_t i : order) {
    unsigned local[3] = {unsigned(i % size[0]), unsigned(i / size[0] % size[1]),
                         unsigned(i / (size_t(size[0]) * size[1]))};
    fill_attrs(g_run->direct_attrs, grid, tg, group, size, local);
    emu_thread_main(g_run->views.data(), &g_run->direct_attrs);
  }
}

}  // namespace

emu::traffic* emu_traffic = nullptr;

// ---- synchronisation called by the kernel -----------------------------------------
extern "C" void emu_simd_wait(emu_simd_fn fn, const void* in, void* out, int arg) {
  Fiber* f = g_run->current;
  if (!g_run->use_fibers || !f) fail(FAULT, "kernel synchronises, but was run without fibers");
  f->state = AT_SIMD;
  f->fn = fn;
  f->req = {in, out, arg};
  context_switch(f->ctx, g_run->scheduler);
}

// An emu::ptr access outside its buffer: remember it, hand back the trap page.
extern "C" void* emu_out_of_bounds(int buffer, long long offset) {
  g_run->trap_buffer = buffer;
  g_run->trap_offset = offset;
  return g_trap;
}

extern "C" void emu_array_fault(int array, long long index, int size) {
  record_thread();
  g_run->result->buffer = array;
  g_run->result->offset = index;
  fail(ARRAY_INDEX, "index %lld of an array of %d elements", index, size);
}

extern "C" void emu_threadgroup_barrier(const char* file, int line) {
  Fiber* f = g_run->current;
  if (!g_run->use_fibers || !f) fail(FAULT, "kernel synchronises, but was run without fibers");
  f->state = AT_BARRIER;
  f->site_file = file;
  f->site_line = line;
  context_switch(f->ctx, g_run->scheduler);
}

// Run the kernel over `grid` threads in threadgroups of `tg` (both x, y, z).
// buffers[i] (nbytes[i] bytes) are copied into guarded memory and, if writable[i],
// copied back after a clean run. `schedule`: 0 forward, 1 reverse, else the seed
// of a shuffled order. `counts` (2 * n_buffers + 1) receives, per buffer, the
// accesses through its kernel pointers and their bytes, then the number of simd
// operations (each resolved once per simdgroup). Returns result->code (0 when clean).
extern "C" int emu_run(int n_buffers, void* const* buffers, const size_t* nbytes, const int* writable,
                       const unsigned* grid, const unsigned* tg, int fibers, int schedule,
                       emu_result* result, unsigned long long* counts) {
  bool reverse = schedule == 1;
  memset(result, 0, sizeof *result);
  result->buffer = -1;
  g_page = size_t(sysconf(_SC_PAGESIZE));
  Run run;
  run.result = result;
  run.use_fibers = fibers != 0;
  run.rng = schedule > 1 ? uint64_t(schedule) : 0;
  g_run = &run;
  size_t tg_bytes = size_t(__stop_emu_tg - __start_emu_tg);
  run.views.resize(n_buffers);
  run.buffers.resize(n_buffers);
  run.traffic.assign(n_buffers, emu::traffic{0, 0});
  emu_traffic = run.traffic.data();

  struct sigaction sa = {}, old[3];
  const int sigs[3] = {SIGSEGV, SIGBUS, SIGFPE};
  stack_t alt = {}, old_alt;
  alt.ss_size = 64 * 1024;
  alt.ss_sp = malloc(alt.ss_size);
  sigaltstack(&alt, &old_alt);
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  for (int i = 0; i < 3; ++i) sigaction(sigs[i], &sa, &old[i]);

  if (sigsetjmp(run.on_fault, 1) == 0) {
    if (tg_bytes > kMaxThreadgroupMemory)
      fail(LIMIT, "the kernel declares %zu bytes of threadgroup memory; Metal allows %zu",
           tg_bytes, kMaxThreadgroupMemory);
    if (!g_trap) {
      void* m = mmap(nullptr, kTrapBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) fail(LIMIT, "could not map the trap page");
      g_trap = static_cast<char*>(m);
    }
    for (int i = 0; i < n_buffers; ++i) {
      if (!map_buffer(run.buffers[i], buffers[i], nbytes[i], writable[i]))
        fail(LIMIT, "could not map a %zu-byte buffer", nbytes[i]);
      run.views[i] = {run.buffers[i].data, nbytes[i]};
    }
    if (run.use_fibers && !ensure_stacks(size_t(tg[0]) * tg[1] * tg[2]))
      fail(LIMIT, "could not map fiber stacks");
    unsigned groups[3], group[3], size[3];
    for (int i = 0; i < 3; ++i) groups[i] = (grid[i] + tg[i] - 1) / tg[i];
    size_t total = size_t(groups[0]) * groups[1] * groups[2];
    std::vector<size_t> group_order;
    visit_order(group_order, total, reverse);
    for (size_t g : group_order) {
      group[0] = unsigned(g % groups[0]);
      group[1] = unsigned(g / groups[0] % groups[1]);
      group[2] = unsigned(g / (size_t(groups[0]) * groups[1]));
      for (int i = 0; i < 3; ++i) size[i] = std::min(tg[i], grid[i] - group[i] * tg[i]);
      if (tg_bytes) memset(__start_emu_tg, kPoison, tg_bytes);  // no memory carried between groups
      (run.use_fibers ? run_group_fibers : run_group_direct)(grid, tg, group, size, reverse);
    }
    for (int i = 0; i < n_buffers; ++i) {
      if (long long at = redzone_damage(run.buffers[i])) {
        result->buffer = i;
        result->offset = at;
        result->is_write = 1;
        fail(REDZONE, "bytes outside the buffer were overwritten (first at byte offset %lld)", at);
      }
    }
    for (int i = 0; i < n_buffers; ++i)
      if (writable[i] && nbytes[i]) memcpy(buffers[i], run.buffers[i].data, nbytes[i]);
  }

  for (int i = 0; i < 3; ++i) sigaction(sigs[i], &old[i], nullptr);
  sigaltstack(&old_alt, nullptr);
  free(alt.ss_sp);
  for (Buffer& b : run.buffers)
    if (b.map) munmap(b.map, b.map_bytes);
  for (int i = 0; i < n_buffers; ++i) {
    counts[2 * i] = run.traffic[i].accesses;
    counts[2 * i + 1] = run.traffic[i].bytes;
  }
  counts[2 * n_buffers] = run.simd_ops;
  emu_traffic = nullptr;
  g_run = nullptr;
  return result->code;
}
