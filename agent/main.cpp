// SPDX-License-Identifier: Apache-2.0
#include "cli.h"

int main(int argc, char** argv) { return envsteer::cli_main(argc, argv); }
