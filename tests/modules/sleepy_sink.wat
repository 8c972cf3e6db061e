;; Test module (hostile): a sink whose init asks WASI to sleep for 20 s
;; (`poll_oneoff` on a clock), outside wasm code where the call deadline
;; cannot stop it. Sinks get no blocking calls: poll_oneoff answers
;; "not supported" (errno 52) at once, and init returns that errno as its
;; status, so the run fails fast naming the sink instead of hanging.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; One subscription at 64 (48 bytes): userdata 0, tag 0 (clock),
  ;; clock id 1 (monotonic) at 80, timeout 20 s in ns at 88, precision 0, flags 0.
  (data (i32.const 80) "\01\00\00\00")
  (data (i32.const 88) "\00\c8\17\a8\04\00\00\00")

  (global $top (mut i32) (i32.const 1024))

  (func (export "hailstorm_abi_version") (result i32) (i32.const 2))

  ;; A bump allocator that grows the memory as needed.
  (func (export "hailstorm_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local $have i32)
    (if (i32.lt_s (local.get $size) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 7)) (i32.const -8)))
    (global.set $top (i32.add (local.get $p) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (global.get $top) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u (i32.add (i32.sub (global.get $top) (local.get $have)) (i32.const 65535))
                                      (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (local.get $p))

  (func (export "hailstorm_free") (param i32 i32))

  ;; Sleeps (events at 128, count at 256); a zero errno means it slept.
  (func (export "hailstorm_init") (param i32 i32) (result i32)
    (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 256)))

  (func (export "hailstorm_resume") (result i64) (i64.const 0))
  (func (export "hailstorm_commit_begin") (param i32 i32) (result i32) (i32.const 0))
  (func (export "hailstorm_commit_changes") (param i32 i32) (result i32) (i32.const 0))
  (func (export "hailstorm_commit_end") (result i64) (i64.const 0))
  (func (export "hailstorm_commit_step") (result i64) (i64.const 0))
)
