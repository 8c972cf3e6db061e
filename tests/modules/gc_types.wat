;; Test module (hostile): an otherwise valid deserializer that declares a GC struct
;; type (its heap would escape the memory cap). Refused at load.

(module
  (type $pair (struct (field i32) (field i32)))
  (global $g (mut (ref null $pair)) (ref.null $pair))
  (memory (export "memory") 1)

  ;; The empty emitted batch (count 0) lives at address 8; hailstorm_deserialize
  ;; returns it as pack(8, 4) = (8 << 32) | 4.
  (data (i32.const 8) "\00\00\00\00")

  ;; A bump allocator above the static data; hailstorm_free never reuses memory.
  (global $top (mut i32) (i32.const 1024))

  (func (export "hailstorm_abi_version") (result i32)
    (i32.const 1))

  (func (export "hailstorm_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local $end i32)
    (local $have i32)
    ;; Sizes of 2 GiB and more are refused (ABI.md: no memory above 2 GiB).
    (if (i32.lt_s (local.get $size) (i32.const 0))
      (then (return (i32.const 0))))
    ;; 8-byte alignment.
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u
                  (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                  (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $top (local.get $end))
    (local.get $p))

  (func (export "hailstorm_free") (param $ptr i32) (param $size i32))

  (func (export "hailstorm_init") (param $ptr i32) (param $len i32) (result i32)
    (i32.const 0))

  (func (export "hailstorm_deserialize") (param $ptr i32) (param $len i32) (result i64)
    (i64.const 34359738372))
)
