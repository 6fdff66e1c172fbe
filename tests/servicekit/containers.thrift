/*
 * Arguments of every container shape, for the wire walk's tests
 * (test_wire.py): a service needs none of them to use the kit.
 */

struct Point { 1: i32 x, 2: i32 y }

/** What client.py's --json and struct_of carry as base64 text and objects (test_cli.py). */
struct Photo { 1: binary data, 2: map<string, Point> marks, 3: list<binary> thumbnails }

service Containers {
  void take(1: list<i64> numbers, 2: list<list<i16>> nested, 3: list<string> words, 4: map<i16, i64> pairs,
            5: list<bool> flags, 6: set<double> ratios, 7: list<Point> points)
}
