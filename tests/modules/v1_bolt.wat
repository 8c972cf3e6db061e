;; Test module: a bolt built for ABI version 1 (whole-state snapshots,
;; `hailstorm_snapshot(slot)` and `hailstorm_clear`). The engine must refuse
;; it at load time and say how to rebuild it.
(module
  (memory (export "memory") 1)
  (func (export "hailstorm_abi_version") (result i32) (i32.const 1))
  (func (export "hailstorm_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "hailstorm_free") (param i32 i32))
  (func (export "hailstorm_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "hailstorm_fold") (param i32 i32 i32) (result i64) (i64.const -1))
  (func (export "hailstorm_merge") (param i32 i32) (result i32) (i32.const 0))
  (func (export "hailstorm_snapshot") (param i32) (result i64) (i64.const -1))
  (func (export "hailstorm_restore") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "hailstorm_clear") (param i32) (result i32) (i32.const 0))
)
