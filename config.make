# nginx build glue, run by nginx's auto/make while it writes objs/Makefile: compile this
# module's C++ sources, and only them, with the C++ standard set in config ($SSE_CXX_STD).
# nginx's rule for every addon source is "$(CC) -c ... $(CFLAGS) ... $(ALL_INCS)"; a GNU make
# target-specific variable appends to CFLAGS for these objects only (nginx's .c files keep theirs).
# The object names follow auto/make: objs/addon/<last directory of the source>/<name>.o
for sse_src in $SSE_CXX_SRCS
do
    sse_obj=`basename \`dirname $sse_src\``/`basename $sse_src .cpp`
    echo "$NGX_OBJS/addon/$sse_obj.$ngx_objext: CFLAGS += $SSE_CXX_STD" >> $NGX_MAKEFILE
done
