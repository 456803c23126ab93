/*
 * TensorRT IPluginV3 plugin "autonad::SpatialShift" v1 (see spatial_shift_plugin.h).
 *
 * Every TensorRT entry point is noexcept: errors are reported through the TensorRT logger
 * and a non-zero return code / nullptr / false, never by exceptions.
 */
#include "spatial_shift_plugin.h"

#include "spatial_shift.h"

#include <atomic>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <utility>

#include <cuda_runtime_api.h>

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ILogger;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace autonad {
namespace plugin {
namespace {

// Set by TensorRT through setLoggerFinder() when it loads this library itself
// (IPluginRegistry::loadLibrary); hosts that dlopen it get TensorRT's global logger.
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

ILogger* pluginLogger() noexcept
{
    if (nvinfer1::ILoggerFinder* finder = gLoggerFinder.load(std::memory_order_acquire)) {
        try {
            if (ILogger* logger = finder->findLogger()) {
                return logger;
            }
        } catch (...) {
            // findLogger() is not noexcept; fall through to the global logger.
        }
    }
    return ::getLogger();  // TensorRT's global logger
}

void emitLog(ILogger::Severity severity, std::string const& layer, char const* what) noexcept
{
    try {
        std::string message = std::string("[autonad::SpatialShift");
        if (!layer.empty()) {
            message += " ";
            message += layer;
        }
        message += "] ";
        message += what;
        if (ILogger* logger = pluginLogger()) {
            logger->log(severity, message.c_str());
        } else {
            std::fprintf(stderr, "%s\n", message.c_str());
        }
    } catch (...) {
        // Out of memory while formatting a log line: nothing sensible left to do.
    }
}

void logError(std::string const& layer, std::string const& what) noexcept
{
    emitLog(ILogger::Severity::kERROR, layer, what.c_str());
}

bool isSupportedType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

// A 4-D shape whose extents all fit the launcher's `int` arguments.
bool isLaunchableShape(Dims const& dims) noexcept
{
    if (dims.nbDims != 4) {
        return false;
    }
    for (int32_t i = 0; i < 4; ++i) {
        if (dims.d[i] < 0 || dims.d[i] > INT_MAX) {
            return false;
        }
    }
    return true;
}

std::string describeDims(Dims const& dims)
{
    std::string s = "[";
    for (int32_t i = 0; i < dims.nbDims && i < Dims::MAX_DIMS; ++i) {
        s += (i ? ", " : "") + std::to_string(static_cast<long long>(dims.d[i]));
    }
    return s + "]";
}

// Reads an integer plugin field of any integer width (the ONNX parser passes kINT32;
// other producers may use kINT64).
bool readScalarInt(PluginField const& field, int64_t& value) noexcept
{
    if (field.data == nullptr || field.length != 1) {
        return false;
    }
    switch (field.type) {
    case PluginFieldType::kINT8: value = *static_cast<int8_t const*>(field.data); return true;
    case PluginFieldType::kINT16: value = *static_cast<int16_t const*>(field.data); return true;
    case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(field.data); return true;
    case PluginFieldType::kINT64: value = *static_cast<int64_t const*>(field.data); return true;
    default: return false;
    }
}

SpatialShiftPluginCreator& creatorInstance() noexcept
{
    static SpatialShiftPluginCreator instance;
    return instance;
}

}  // namespace

// ------------------------------------------------------------------ SpatialShiftPlugin

SpatialShiftPlugin::SpatialShiftPlugin(std::string layerName, int32_t pattern)
    : mLayerName(std::move(layerName)), mPattern(pattern), mConfig("pattern=" + std::to_string(pattern))
{
}

IPluginCapability* SpatialShiftPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type) {
    case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* SpatialShiftPlugin::clone() noexcept
{
    try {
        return new SpatialShiftPlugin(mLayerName, mPattern);
    } catch (std::exception const& e) {
        logError(mLayerName, std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* SpatialShiftPlugin::getPluginName() const noexcept
{
    return kSpatialShiftName;
}

char const* SpatialShiftPlugin::getPluginVersion() const noexcept
{
    return kSpatialShiftVersion;
}

char const* SpatialShiftPlugin::getPluginNamespace() const noexcept
{
    return kSpatialShiftNamespace;
}

int32_t SpatialShiftPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t SpatialShiftPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                               int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbInputs != 1 || nbOutputs != 1) {
        logError(mLayerName, "expects exactly one input and one output");
        return -1;
    }
    if (!isSupportedType(inputTypes[0])) {
        logError(mLayerName, "input must be fp32 or fp16");
        return -1;
    }
    outputTypes[0] = inputTypes[0];  // a data movement op: same type out as in
    return 0;
}

int32_t SpatialShiftPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                                            int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                                            nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != 1 || nbOutputs != 1) {
        logError(mLayerName, "expects exactly one input and one output");
        return -1;
    }
    if (inputs[0].nbDims != 4) {
        logError(mLayerName, "input must be a 4-D NCHW tensor, got rank " + std::to_string(inputs[0].nbDims));
        return -1;
    }
    outputs[0] = inputs[0];  // output shape == input shape, symbolically (dynamic dims included)
    return 0;
}

bool SpatialShiftPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                   int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1) {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) {
        return false;
    }
    // The input may be fp32 or fp16; the output must match it (decided from inOut[0..pos]).
    return pos == 0 ? isSupportedType(desc.type) : desc.type == inOut[0].desc.type;
}

int32_t SpatialShiftPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                            DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != 1 || nbOutputs != 1) {
        logError(mLayerName, "expects exactly one input and one output");
        return -1;
    }
    if (in[0].desc.dims.nbDims != 4 || out[0].desc.dims.nbDims != 4) {
        logError(mLayerName, "input and output must be 4-D NCHW tensors");
        return -1;
    }
    return 0;
}

size_t SpatialShiftPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
                                            DynamicPluginTensorDesc const* /*outputs*/,
                                            int32_t /*nbOutputs*/) const noexcept
{
    return 0;  // a single out-of-place pass needs no scratch memory
}

char const* SpatialShiftPlugin::getTimingCacheID() noexcept
{
    // Shapes and formats are added by TensorRT; the pattern is the only creation state.
    return mConfig.c_str();
}

char const* SpatialShiftPlugin::getMetadataString() noexcept
{
    return mConfig.c_str();
}

int32_t SpatialShiftPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                                          int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != 1 || nbOutputs != 1) {
        logError(mLayerName, "expects exactly one input and one output");
        return -1;
    }
    if (!isLaunchableShape(in[0].dims) || in[0].type != out[0].type || !isSupportedType(in[0].type)) {
        try {
            logError(mLayerName, "unsupported input " + describeDims(in[0].dims) +
                                     " (need a 4-D fp32/fp16 tensor with extents < 2^31)");
        } catch (...) {
        }
        return -1;
    }
    return 0;
}

int32_t SpatialShiftPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                                    void const* const* inputs, void* const* outputs, void* /*workspace*/,
                                    cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr) {
        logError(mLayerName, "enqueue called without tensors");
        return -1;
    }
    Dims const& dims = inputDesc[0].dims;
    if (!isLaunchableShape(dims) || inputDesc[0].type != outputDesc[0].type || !isSupportedType(inputDesc[0].type)) {
        logError(mLayerName, "enqueue: unsupported input shape or type");
        return -1;
    }
    int const dtype = inputDesc[0].type == DataType::kFLOAT ? AUTONAD_SHIFT_FP32 : AUTONAD_SHIFT_FP16;
    int const status = autonad_spatial_shift(inputs[0], outputs[0], static_cast<int>(dims.d[0]),
                                             static_cast<int>(dims.d[1]), static_cast<int>(dims.d[2]),
                                             static_cast<int>(dims.d[3]), mPattern, dtype, stream);
    if (status != 0) {
        emitLog(ILogger::Severity::kERROR, mLayerName, cudaGetErrorString(static_cast<cudaError_t>(status)));
        return status;
    }
    return 0;
}

IPluginV3* SpatialShiftPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();  // no per-context resources
}

PluginFieldCollection const* SpatialShiftPlugin::getFieldsToSerialize() noexcept
{
    // Rebuilt on each call so the pointers always refer to this object's own members.
    mSerialField = PluginField(kPatternField, &mPattern, PluginFieldType::kINT32, 1);
    mSerialFields.nbFields = 1;
    mSerialFields.fields = &mSerialField;
    return &mSerialFields;
}

// ------------------------------------------------------------------ SpatialShiftPluginCreator

SpatialShiftPluginCreator::SpatialShiftPluginCreator() noexcept
    : mFields{PluginField(kPatternField, nullptr, PluginFieldType::kINT32, 1)}
{
    mFieldCollection.nbFields = 1;
    mFieldCollection.fields = mFields;
}

char const* SpatialShiftPluginCreator::getPluginName() const noexcept
{
    return kSpatialShiftName;
}

char const* SpatialShiftPluginCreator::getPluginVersion() const noexcept
{
    return kSpatialShiftVersion;
}

char const* SpatialShiftPluginCreator::getPluginNamespace() const noexcept
{
    return kSpatialShiftNamespace;
}

PluginFieldCollection const* SpatialShiftPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* SpatialShiftPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                                   nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    // Same fields in both phases: the build phase gets the ONNX attributes, the runtime
    // phase what getFieldsToSerialize() wrote into the engine.
    try {
        std::string const layer = name != nullptr ? name : "";
        bool found = false;
        int64_t pattern = 0;
        for (int32_t i = 0; fc != nullptr && fc->fields != nullptr && i < fc->nbFields; ++i) {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr || std::strcmp(field.name, kPatternField) != 0) {
                continue;  // unknown fields are ignored (e.g. attributes meant for other tools)
            }
            if (!readScalarInt(field, pattern)) {
                logError(layer, "field 'pattern' must be a single integer");
                return nullptr;
            }
            found = true;
        }
        if (!found) {
            logError(layer, "required field 'pattern' (1 or 2) is missing");
            return nullptr;
        }
        if (pattern != 1 && pattern != 2) {
            logError(layer, "field 'pattern' must be 1 or 2, got " + std::to_string(static_cast<long long>(pattern)));
            return nullptr;
        }
        return new SpatialShiftPlugin(layer, static_cast<int32_t>(pattern));
    } catch (std::exception const& e) {
        logError("", std::string("createPlugin failed: ") + e.what());
    } catch (...) {
        logError("", "createPlugin failed");
    }
    return nullptr;
}

}  // namespace plugin
}  // namespace autonad

// ------------------------------------------------------------------ library entry points

extern "C" AUTONAD_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {&autonad::plugin::creatorInstance()};
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}

extern "C" AUTONAD_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    // TensorRT owns the finder and keeps it alive while the library is loaded.
    nvinfer1::ILoggerFinder* expected = nullptr;
    autonad::plugin::gLoggerFinder.compare_exchange_strong(expected, finder, std::memory_order_acq_rel);
}

extern "C" AUTONAD_PLUGIN_API int32_t initAutonadPlugins(void)
{
    using namespace autonad::plugin;
    static std::mutex registrationMutex;
    try {
        std::lock_guard<std::mutex> lock(registrationMutex);
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr) {
            return 1;
        }
        SpatialShiftPluginCreator& creator = creatorInstance();
        nvinfer1::IPluginCreatorInterface* const existing =
            registry->getCreator(kSpatialShiftName, kSpatialShiftVersion, kSpatialShiftNamespace);
        if (existing == static_cast<nvinfer1::IPluginCreatorInterface*>(&creator)) {
            return 0;  // registered before, by this call or by loadLibrary() -> getCreators()
        }
        if (existing != nullptr) {
            logError("", "another library already registered autonad::SpatialShift v1");
            return 3;
        }
        return registry->registerCreator(creator, kSpatialShiftNamespace) ? 0 : 2;
    } catch (...) {
        return 4;
    }
}

#define AUTONAD_STR2(x) #x
#define AUTONAD_STR(x) AUTONAD_STR2(x)

extern "C" AUTONAD_PLUGIN_API char const* autonadPluginBuildInfo(void)
{
    return "autonad::SpatialShift v1 (IPluginV3); TensorRT " AUTONAD_STR(NV_TENSORRT_MAJOR) "." AUTONAD_STR(
        NV_TENSORRT_MINOR) "." AUTONAD_STR(NV_TENSORRT_PATCH) "; CUDA runtime " AUTONAD_STR(CUDART_VERSION);
}
