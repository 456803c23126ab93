/*
 * TensorRT IPluginV3 plugin for the spatial shift: name "SpatialShift", version "1",
 * namespace "autonad", one int32 field "pattern" (1 or 2).
 *
 * It is what TensorRT's ONNX parser instantiates for a node with op_type "SpatialShift",
 * domain "autonad" and attributes pattern / plugin_version="1" / plugin_namespace="autonad".
 * One input, one output of the same shape (NCHW, any dynamic dims), fp32 or fp16, linear
 * format.
 *
 * The V3 interfaces used here (IPluginV3, IPluginV3OneCore/Build/Runtime,
 * IPluginCreatorV3One) are identical in TensorRT 10.x and 11.x, so one source serves both
 * tracks; only TensorRT < 10 (JetPack 5) is refused at compile time.
 */
#ifndef AUTONAD_SPATIAL_SHIFT_PLUGIN_H
#define AUTONAD_SPATIAL_SHIFT_PLUGIN_H

#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <cstdint>
#include <string>

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "the SpatialShift plugin implements IPluginV3, which needs TensorRT >= 10 (JetPack 6 or newer)"
#endif

#if defined(_WIN32)
#define AUTONAD_PLUGIN_API __declspec(dllexport)
#else
#define AUTONAD_PLUGIN_API __attribute__((visibility("default")))
#endif

namespace autonad {
namespace plugin {

constexpr char kSpatialShiftName[] = "SpatialShift";
constexpr char kSpatialShiftVersion[] = "1";
constexpr char kSpatialShiftNamespace[] = "autonad";
constexpr char kPatternField[] = "pattern";

class SpatialShiftPlugin final : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime
{
public:
    // `pattern` must be 1 or 2 (the creator validates it). May throw std::bad_alloc.
    SpatialShiftPlugin(std::string layerName, int32_t pattern);
    ~SpatialShiftPlugin() override = default;

    // Owned by TensorRT through IPluginV3*; copies would alias the serialisation fields.
    SpatialShiftPlugin(SpatialShiftPlugin const&) = delete;
    SpatialShiftPlugin& operator=(SpatialShiftPlugin const&) = delete;
    SpatialShiftPlugin(SpatialShiftPlugin&&) = delete;
    SpatialShiftPlugin& operator=(SpatialShiftPlugin&&) = delete;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                            int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    std::string const mLayerName;
    int32_t const mPattern;
    std::string const mConfig;  // "pattern=N": timing-cache key suffix and metadata
    nvinfer1::PluginField mSerialField{};
    nvinfer1::PluginFieldCollection mSerialFields{};
};

class SpatialShiftPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    SpatialShiftPluginCreator() noexcept;
    ~SpatialShiftPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;

private:
    nvinfer1::PluginField mFields[1];
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

}  // namespace plugin
}  // namespace autonad

extern "C" {
// The plugin-library contract of IPluginRegistry::loadLibrary (and trtexec --dynamicPlugins).
AUTONAD_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
AUTONAD_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

// For hosts that dlopen the library themselves (the agent, via ctypes): register the
// creator with the global plugin registry. Idempotent and thread-safe. Returns 0 when the
// creator is (now or already) registered, 1 if TensorRT returned no registry, 2 if the
// registry refused the creator, 3 if a different library already registered
// autonad::SpatialShift v1, 4 on an internal error.
AUTONAD_PLUGIN_API int32_t initAutonadPlugins(void);

// One line describing the build: plugin identity, TensorRT and CUDA versions it was
// compiled against. Static storage; never null.
AUTONAD_PLUGIN_API char const* autonadPluginBuildInfo(void);
}

#endif  // AUTONAD_SPATIAL_SHIFT_PLUGIN_H
