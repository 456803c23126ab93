// Host-side unit test of the SpatialShift IPluginV3 plugin, compiled against the real
// TensorRT headers (10.x or 11.x) with libnvinfer's two C entry points, cudaGetErrorString
// and the CUDA launcher replaced by recording stubs: no GPU and no libnvinfer needed.
// Built and run (under ASan/UBSan) by tests/test_tensorrt_backend.py wherever NvInfer.h is
// found; by hand (from this directory):
//   c++ -std=c++17 -fsanitize=address,undefined -I.. -isystem $TRT/include -isystem $CUDA/include
//       plugin_host_test.cpp ../spatial_shift_plugin.cpp && ./a.out
#include "spatial_shift_plugin.h"
#include "spatial_shift.h"

#include <climits>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

static int gFailures = 0;
#define EXPECT(cond)                                                                   \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            std::fprintf(stderr, "FAILED line %d: %s\n", __LINE__, #cond);             \
            ++gFailures;                                                               \
        }                                                                              \
    } while (0)

struct RecordingLogger : ILogger {
    std::vector<std::string> messages;
    void log(Severity, AsciiChar const* msg) noexcept override { messages.emplace_back(msg); }
};
static RecordingLogger gGlobalLogger;

struct LaunchRecord {
    const void* x; void* y; int n, c, h, w, pattern, dtype; cudaStream_t stream; int calls;
};
static LaunchRecord gLaunch{};
static int gLaunchResult = 0;

extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept { return nullptr; }
extern "C" nvinfer1::ILogger* getLogger() noexcept { return &gGlobalLogger; }
extern "C" const char* cudaGetErrorString(cudaError_t) { return "stub CUDA error"; }
extern "C" int autonad_spatial_shift(const void* x, void* y, int n, int c, int h, int w, int pattern, int dtype,
                                     cudaStream_t stream)
{
    gLaunch = {x, y, n, c, h, w, pattern, dtype, stream, gLaunch.calls + 1};
    return gLaunchResult;
}

static IPluginV3* create(IPluginCreatorV3One* creator, std::vector<PluginField> const& fields,
                         TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    return creator->createPlugin("layer0", &fc, phase);
}

static DynamicPluginTensorDesc desc(DataType type, TensorFormat format, std::vector<int64_t> dims)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = format;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) d.desc.dims.d[i] = dims[i];
    return d;
}

int main()
{
    int32_t nb = 0;
    IPluginCreatorInterface* const* creators = getCreators(nb);
    EXPECT(nb == 1 && creators != nullptr && creators[0] != nullptr);
    EXPECT(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    EXPECT(std::strcmp(creator->getPluginName(), "SpatialShift") == 0);
    EXPECT(std::strcmp(creator->getPluginVersion(), "1") == 0);
    EXPECT(std::strcmp(creator->getPluginNamespace(), "autonad") == 0);
    PluginFieldCollection const* names = creator->getFieldNames();
    EXPECT(names->nbFields == 1 && std::strcmp(names->fields[0].name, "pattern") == 0 &&
           names->fields[0].type == PluginFieldType::kINT32);

    // createPlugin: accepted and refused fields.
    int32_t p1 = 1, p3 = 3, pair[2] = {1, 2};
    int64_t p2 = 2;
    float pf = 1.0F;
    char const* junk = "autonad";
    IPluginV3* plugin = create(creator, {PluginField("plugin_namespace", junk, PluginFieldType::kCHAR, 8),
                                         PluginField("pattern", &p1, PluginFieldType::kINT32, 1)});
    EXPECT(plugin != nullptr);
    IPluginV3* plugin2 = create(creator, {PluginField("pattern", &p2, PluginFieldType::kINT64, 1)});
    EXPECT(plugin2 != nullptr);
    size_t logged = gGlobalLogger.messages.size();
    EXPECT(create(creator, {}) == nullptr);
    EXPECT(create(creator, {PluginField("pattern", &p3, PluginFieldType::kINT32, 1)}) == nullptr);
    EXPECT(create(creator, {PluginField("pattern", pair, PluginFieldType::kINT32, 2)}) == nullptr);
    EXPECT(create(creator, {PluginField("pattern", &pf, PluginFieldType::kFLOAT32, 1)}) == nullptr);
    EXPECT(create(creator, {PluginField("pattern", nullptr, PluginFieldType::kINT32, 1)}) == nullptr);
    EXPECT(creator->createPlugin("x", nullptr, TensorRTPhase::kBUILD) == nullptr);
    EXPECT(gGlobalLogger.messages.size() == logged + 6);  // every refusal says why
    EXPECT(gGlobalLogger.messages.back().find("autonad::SpatialShift") != std::string::npos);

    // Capabilities.
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    EXPECT(core && build && runtime);
    EXPECT(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
    EXPECT(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
    EXPECT(std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
    EXPECT(std::strcmp(plugin->getInterfaceInfo().kind, "PLUGIN") == 0);
    EXPECT(std::strcmp(core->getPluginName(), "SpatialShift") == 0 && std::strcmp(core->getPluginVersion(), "1") == 0 &&
           std::strcmp(core->getPluginNamespace(), "autonad") == 0);

    // Build capability.
    EXPECT(build->getNbOutputs() == 1);
    DataType out{};
    DataType in = DataType::kFLOAT;
    EXPECT(build->getOutputDataTypes(&out, 1, &in, 1) == 0 && out == DataType::kFLOAT);
    in = DataType::kHALF;
    EXPECT(build->getOutputDataTypes(&out, 1, &in, 1) == 0 && out == DataType::kHALF);
    in = DataType::kINT32;
    EXPECT(build->getOutputDataTypes(&out, 1, &in, 1) != 0);
    EXPECT(build->getOutputDataTypes(&out, 1, &in, 2) != 0);

    DimsExprs inShape{};
    inShape.nbDims = 4;
    for (int i = 0; i < 4; ++i) inShape.d[i] = reinterpret_cast<IDimensionExpr const*>(uintptr_t(0x1000 + 16 * i));
    DimsExprs outShape{};
    struct UnusedExprBuilder : IExprBuilder {  // the output shape is the input's: no expressions built
        UnusedExprBuilder() { mImpl = nullptr; }
    } unusedBuilder;
    IExprBuilder& noBuilder = unusedBuilder;
    EXPECT(build->getOutputShapes(&inShape, 1, nullptr, 0, &outShape, 1, noBuilder) == 0);
    EXPECT(outShape.nbDims == 4);
    for (int i = 0; i < 4; ++i) EXPECT(outShape.d[i] == inShape.d[i]);
    inShape.nbDims = 3;
    EXPECT(build->getOutputShapes(&inShape, 1, nullptr, 0, &outShape, 1, noBuilder) != 0);

    auto combo = [&](int pos, DataType t0, TensorFormat f0, DataType t1, TensorFormat f1) {
        DynamicPluginTensorDesc io[2] = {desc(t0, f0, {1, 8, 4, 4}), desc(t1, f1, {1, 8, 4, 4})};
        return build->supportsFormatCombination(pos, io, 1, 1);
    };
    TensorFormat const lin = TensorFormat::kLINEAR, chw4 = TensorFormat::kCHW4;
    EXPECT(combo(0, DataType::kFLOAT, lin, DataType::kFLOAT, lin));
    EXPECT(combo(0, DataType::kHALF, lin, DataType::kFLOAT, lin));
    EXPECT(!combo(0, DataType::kINT8, lin, DataType::kINT8, lin));
    EXPECT(!combo(0, DataType::kFLOAT, chw4, DataType::kFLOAT, lin));
    EXPECT(combo(1, DataType::kHALF, lin, DataType::kHALF, lin));
    EXPECT(!combo(1, DataType::kHALF, lin, DataType::kFLOAT, lin));
    EXPECT(!combo(1, DataType::kFLOAT, lin, DataType::kFLOAT, chw4));
    EXPECT(!combo(2, DataType::kFLOAT, lin, DataType::kFLOAT, lin));

    DynamicPluginTensorDesc cin = desc(DataType::kFLOAT, lin, {-1, 8, -1, -1});
    DynamicPluginTensorDesc cout = cin;
    EXPECT(build->configurePlugin(&cin, 1, &cout, 1) == 0);
    DynamicPluginTensorDesc bad = desc(DataType::kFLOAT, lin, {8, 4, 4});
    EXPECT(build->configurePlugin(&bad, 1, &bad, 1) != 0);
    EXPECT(build->getWorkspaceSize(&cin, 1, &cout, 1) == 0);
    EXPECT(std::strcmp(build->getTimingCacheID(), "pattern=1") == 0);

    // Runtime capability: shape checks and enqueue plumbing.
    PluginTensorDesc rin = desc(DataType::kHALF, lin, {2, 6, 5, 7}).desc;
    PluginTensorDesc rout = rin;
    EXPECT(runtime->onShapeChange(&rin, 1, &rout, 1) == 0);
    PluginTensorDesc rbad = desc(DataType::kHALF, lin, {2, 6, 5}).desc;
    EXPECT(runtime->onShapeChange(&rbad, 1, &rbad, 1) != 0);
    float xbuf[4], ybuf[4];
    void const* inputs[] = {xbuf};
    void* outputs[] = {ybuf};
    auto stream = reinterpret_cast<cudaStream_t>(uintptr_t(0xabc0));
    EXPECT(runtime->enqueue(&rin, &rout, inputs, outputs, nullptr, stream) == 0);
    EXPECT(gLaunch.calls == 1 && gLaunch.x == xbuf && gLaunch.y == ybuf && gLaunch.n == 2 && gLaunch.c == 6 &&
           gLaunch.h == 5 && gLaunch.w == 7 && gLaunch.pattern == 1 && gLaunch.dtype == AUTONAD_SHIFT_FP16 &&
           gLaunch.stream == stream);
    auto* runtime2 = static_cast<IPluginV3OneRuntime*>(plugin2->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc fin = desc(DataType::kFLOAT, lin, {1, 3, 1, 9}).desc;
    EXPECT(runtime2->enqueue(&fin, &fin, inputs, outputs, nullptr, stream) == 0);
    EXPECT(gLaunch.calls == 2 && gLaunch.pattern == 2 && gLaunch.dtype == AUTONAD_SHIFT_FP32 && gLaunch.c == 3);
    gLaunchResult = 700;
    logged = gGlobalLogger.messages.size();
    EXPECT(runtime->enqueue(&rin, &rout, inputs, outputs, nullptr, stream) == 700);
    EXPECT(gGlobalLogger.messages.size() == logged + 1);
    gLaunchResult = 0;
    PluginTensorDesc mixed = fin;
    mixed.type = DataType::kHALF;
    EXPECT(runtime->enqueue(&fin, &mixed, inputs, outputs, nullptr, stream) != 0);
    PluginTensorDesc huge = desc(DataType::kFLOAT, lin, {1, 1, 1, int64_t(INT_MAX) + 1}).desc;
    EXPECT(runtime->enqueue(&huge, &huge, inputs, outputs, nullptr, stream) != 0);
    EXPECT(runtime->enqueue(&rbad, &rbad, inputs, outputs, nullptr, stream) != 0);
    EXPECT(gLaunch.calls == 3);  // refused calls never reach the kernel

    // Serialization round trip, clone and attachToContext.
    PluginFieldCollection const* serial = runtime2->getFieldsToSerialize();
    EXPECT(serial->nbFields == 1 && std::strcmp(serial->fields[0].name, "pattern") == 0 &&
           serial->fields[0].type == PluginFieldType::kINT32 && serial->fields[0].length == 1 &&
           *static_cast<int32_t const*>(serial->fields[0].data) == 2);
    IPluginV3* restored = creator->createPlugin("layer0", serial, TensorRTPhase::kRUNTIME);
    EXPECT(restored != nullptr);
    IPluginV3* cloned = plugin2->clone();
    IPluginV3* attached = runtime2->attachToContext(nullptr);
    EXPECT(cloned != nullptr && cloned != plugin2 && attached != nullptr && attached != plugin2);
    for (IPluginV3* copy : {restored, cloned, attached}) {
        auto* r = static_cast<IPluginV3OneRuntime*>(copy->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* fc = r->getFieldsToSerialize();
        EXPECT(*static_cast<int32_t const*>(fc->fields[0].data) == 2);
        EXPECT(fc->fields[0].data != serial->fields[0].data);  // points into the copy, not the original
        delete copy;
    }

    // A logger finder (the loadLibrary path) takes precedence over the global logger.
    struct Finder : ILoggerFinder {
        RecordingLogger logger;
        ILogger* findLogger() override { return &logger; }
    };
    static Finder finder;
    setLoggerFinder(&finder);
    logged = gGlobalLogger.messages.size();
    EXPECT(create(creator, {}) == nullptr);
    EXPECT(finder.logger.messages.size() == 1 && gGlobalLogger.messages.size() == logged);

    EXPECT(initAutonadPlugins() == 1);  // the stub returns no registry
    EXPECT(std::strstr(autonadPluginBuildInfo(), "SpatialShift v1") != nullptr);

    delete plugin;
    delete plugin2;
    if (gFailures == 0) std::printf("plugin harness: all checks passed (%s)\n", autonadPluginBuildInfo());
    return gFailures == 0 ? 0 : 1;
}
