echo "Hello, $PARAM_NAME!"
