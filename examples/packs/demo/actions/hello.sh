#!/bin/sh
echo "Hello, $PARAM_NAME!"
