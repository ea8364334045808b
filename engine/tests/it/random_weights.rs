//! Seeded random weights: the 16-bit tensors are exactly the f32 ones rounded (one generator,
//! written straight into the weight's buffer), for even and odd sizes.

use troupe_engine::dtype::{f32_to_bf16, f32_to_f16, DType};
use troupe_engine::weights::random::{random_weight, RandomInit};

#[test]
fn sixteen_bit_random_weights_are_the_f32_ones_rounded() {
    for shape in [vec![7usize, 3], vec![4, 4], vec![1], vec![5]] {
        let f = random_weight("t", shape.clone(), DType::F32, RandomInit::Normal(0.02), 9).unwrap();
        let values = f.to_f32_vec();
        assert_eq!(values.len(), shape.iter().product::<usize>());
        for (dtype, round) in [
            (DType::BF16, f32_to_bf16 as fn(f32) -> u16),
            (DType::F16, f32_to_f16),
        ] {
            let h = random_weight("t", shape.clone(), dtype, RandomInit::Normal(0.02), 9).unwrap();
            let want: Vec<u16> = values.iter().map(|&v| round(v)).collect();
            assert_eq!(h.as_u16().unwrap(), want.as_slice(), "{dtype} {shape:?}");
            assert_eq!(h.nbytes(), 2 * values.len());
        }
    }
}

#[test]
fn the_values_depend_on_the_seed_and_the_name_only() {
    let a = random_weight("a", vec![9], DType::F32, RandomInit::Normal(1.0), 1).unwrap();
    let b = random_weight("a", vec![9], DType::F32, RandomInit::Normal(1.0), 1).unwrap();
    let c = random_weight("b", vec![9], DType::F32, RandomInit::Normal(1.0), 1).unwrap();
    assert_eq!(a.to_f32_vec(), b.to_f32_vec());
    assert_ne!(a.to_f32_vec(), c.to_f32_vec());
    let ones = random_weight("n", vec![3], DType::BF16, RandomInit::Ones, 1).unwrap();
    assert_eq!(ones.to_f32_vec(), vec![1.0; 3]);
}
