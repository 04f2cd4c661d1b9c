//! The "bench-size" AnimateDiff model of `shared/bench/BASELINE.md` ("Exact configs"), shared
//! by the FreeNoise benchmarks.

use vdm::core::Result;
use vdm::models::unet_motion::{
    MotionAdapterConfig, PerBlock, UNet2DConditionConfig, UNetMotionConfig,
};

/// MOTION_U2 merged with MOTION_MA (`UNetMotionModel.from_unet2d`): SD-1.5 layout with
/// channels / 10, 32-row positional tables, 13.4 M parameters.
pub fn bench_motion_config() -> Result<UNetMotionConfig> {
    let channels = vec![32, 64, 128, 128];
    let unet = UNet2DConditionConfig {
        sample_size: Some(32.into()),
        block_out_channels: channels.clone(),
        layers_per_block: PerBlock::Same(2),
        cross_attention_dim: PerBlock::Same(128),
        attention_head_dim: PerBlock::Same(8),
        norm_num_groups: Some(32),
        ..Default::default()
    };
    let adapter = MotionAdapterConfig {
        block_out_channels: channels,
        motion_layers_per_block: PerBlock::Same(2),
        motion_mid_block_layers_per_block: 1,
        motion_num_attention_heads: PerBlock::Same(8),
        motion_norm_num_groups: 32,
        motion_max_seq_length: 32,
        use_motion_mid_block: true,
        ..Default::default()
    };
    UNetMotionConfig::from_unet2d(&unet, &adapter)
}
