use drainwatch::source::ftrace::PageLayout;

#[test]
fn page_header_layout_is_read_from_tracefs() {
    let text = include_str!("fixtures/tracefs/header_page");
    let layout = PageLayout::parse(text).unwrap();
    assert_eq!(layout.commit.offset, 8);
    assert_eq!(layout.data_offset, 16);
}
