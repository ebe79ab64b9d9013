/* The inspect document the policy fuzz targets run their random policies
 * over (one container, one published port, labels, env, a network). */
#ifndef REGISTER_FUZZ_INSPECT_H
#define REGISTER_FUZZ_INSPECT_H

static const char fuzz_inspect[] =
    "{\"Id\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
    "ef\",\"Name\":\"/web\",\"Image\":\"sha256:1\",\"Created\":\"2026-01-01\","
    "\"State\":{\"Running\":true,\"Status\":\"running\"},"
    "\"Config\":{\"Image\":\"team/web:1\",\"Hostname\":\"h\",\"Env\":["
    "\"A=1\",\"SERVICE_NAME=web\"],\"Labels\":{\"l\":\"v\"},"
    "\"ExposedPorts\":{\"80/tcp\":{}}},\"NetworkSettings\":{\"Ports\":{"
    "\"80/tcp\":[{\"HostIp\":\"0.0.0.0\",\"HostPort\":\"32768\"}]},"
    "\"Networks\":{\"bridge\":{\"IPAddress\":\"172.17.0.2\"}}}}";

#endif
